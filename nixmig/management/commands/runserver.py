"""``runserver`` that also warns about unapplied SQL migrations, after Django's own warning.

Django picks the ``runserver`` of the first app in INSTALLED_APPS that has one: list
``nixmig`` above ``django.contrib.staticfiles`` (whose runserver this one extends, so
static files are still served).
"""

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS

from nixmig import checks
from nixmig.exceptions import NixmigError

if apps.is_installed("django.contrib.staticfiles"):
    from django.contrib.staticfiles.management.commands.runserver import Command as BaseRunserver
else:
    from django.core.management.commands.runserver import Command as BaseRunserver


class Command(BaseRunserver):
    def check_migrations(self):
        super().check_migrations()
        self.check_sql_migrations()

    def check_sql_migrations(self, database: str = DEFAULT_DB_ALIAS) -> None:
        """Print 'You have N unapplied SQL migration(s)...' when there are; never fail."""
        try:
            status = checks.read_status(database)
        except NixmigError:  # a broken tree is reported by sqlmigrate_status; the server still starts
            return
        message = checks.pending_message(status, database) if status is not None else None
        if message:
            self.stdout.write(self.style.NOTICE("\n" + message))
            self.stdout.write(self.style.NOTICE(checks.run_hint(database)[:-1] + " to apply them."))
