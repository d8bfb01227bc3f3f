"""The tracking table as a read-only model, for the admin and for queries.

The table is created by nixmig itself (any sqlmigrate_* command), not by Django's
``migrate``, so the model is unmanaged: ``manage.py migrate`` before or after never fails.
"""

from django.core.signals import setting_changed
from django.db import models
from django.dispatch import receiver

from . import conf, sqlnames
from .exceptions import UnsafeName


def tracking_db_table() -> str:
    """Return NIXMIG['TABLE'] quoted ('"nx"."migrations"'), so Django reads a schema-qualified table.

    Django quotes a db_table only when it is not quoted already; unquoted, 'nx.migrations'
    would be one name with a dot in it. A name that isn't a table name is left as it is:
    every command refuses it with a clear message.
    """
    try:
        return sqlnames.table(conf.table())
    except UnsafeName:
        return str(conf.table())


class MigrationRecord(models.Model):
    name = models.CharField(
        max_length=255, help_text="NNN_name of the migration, without its module (e.g. 001_create_users)."
    )
    # NULL, not "": a bare name written by the Nixopus Go migrator (the table predates nixmig).
    module = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    applied_at = models.DateTimeField()
    checksum = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001 (NULL: adopted, not yet read)
    execution_ms = models.FloatField(null=True, blank=True, verbose_name="execution time (ms)")

    class Meta:
        managed = False
        db_table = tracking_db_table()
        ordering = ["-applied_at", "-id"]
        verbose_name = "applied SQL migration"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return self.migration_id

    @property
    def migration_id(self) -> str:
        return f"{self.module}/{self.name}" if self.module else self.name


@receiver(setting_changed)
def follow_the_table_setting(setting: str, **kwargs) -> None:
    """Keep the model on NIXMIG['TABLE'] when tests change it (override_settings)."""
    if setting == "NIXMIG" and MigrationRecord._meta.db_table != tracking_db_table():
        MigrationRecord._meta.db_table = tracking_db_table()
        for f in MigrationRecord._meta.concrete_fields:
            f.__dict__.pop("cached_col", None)  # Field.cached_col keeps the table it was first used with
