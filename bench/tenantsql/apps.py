from django.apps import AppConfig


class TenantSqlConfig(AppConfig):
    """The tenant app of bench/tenants.py: one RunSQL migration per SQL file of migrations_sql/."""

    name = "bench.tenantsql"
    label = "tenantsql"
