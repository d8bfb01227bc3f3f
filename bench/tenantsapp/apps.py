from django.apps import AppConfig


class TenantsAppConfig(AppConfig):
    """django-tenants' tenant and domain models, for bench/tenants.py only."""

    name = "bench.tenantsapp"
    label = "tenantsapp"
    default_auto_field = "django.db.models.BigAutoField"
