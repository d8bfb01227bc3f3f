from django.apps import AppConfig
from django.core import checks


class NixmigConfig(AppConfig):
    name = "nixmig"
    verbose_name = "SQL migrations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import api, lint
        from .checks import check_pending_at_runserver, check_sql_migrations

        checks.register(check_sql_migrations, checks.Tags.database)
        checks.register(check_pending_at_runserver)  # runserver's checks run without databases
        api.register_plan_check(
            lint.plan_check
        )  # every up run (command, API, startup, migrate) lints its plan
