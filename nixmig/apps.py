from django.apps import AppConfig


class NixmigConfig(AppConfig):
    name = "nixmig"
    verbose_name = "SQL migrations"
    default_auto_field = "django.db.models.BigAutoField"
