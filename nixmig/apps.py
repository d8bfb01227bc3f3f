from django.apps import AppConfig
from django.core import checks


class NixmigConfig(AppConfig):
    name = "nixmig"
    verbose_name = "SQL migrations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import api, lint
        from .checks import check_sql_migrations

        checks.register(check_sql_migrations, checks.Tags.database)
        api.register_plan_check(
            lint.plan_check
        )  # every up run (command, API, startup, migrate) lints its plan
