"""Settings for django-tenants in bench/tenants.py (never used by the app or its tests).

django-tenants needs its own database ENGINE, a tenant model in a shared app and a
router. The tenant app ``tenantsql`` gets its migrations from the generated package
``bench_tenant_sql_migrations`` in the folder NIXMIG_BENCH_TENANTS_PATH names: one RunSQL
per SQL file of migrations_sql/, in nixmig's order. TENANT_MULTIPROCESSING_MAX_PROCESSES
comes from NIXMIG_BENCH_PROCESSES.
"""

import os
import sys

from project.settings import *  # noqa: F401,F403
from project.settings import DATABASES

_path = os.environ.get("NIXMIG_BENCH_TENANTS_PATH")
if _path:
    sys.path.insert(0, _path)

DATABASES["default"] = {**DATABASES["default"], "ENGINE": "django_tenants.postgresql_backend"}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
SHARED_APPS = ["django_tenants", "bench.tenantsapp", "django.contrib.contenttypes"]
TENANT_APPS = ["bench.tenantsql"]
INSTALLED_APPS = SHARED_APPS + TENANT_APPS
TENANT_MODEL = "tenantsapp.Client"
TENANT_DOMAIN_MODEL = "tenantsapp.Domain"
MIGRATION_MODULES = {"tenantsql": "bench_tenant_sql_migrations" if _path else None}
TENANT_MULTIPROCESSING_MAX_PROCESSES = int(os.environ.get("NIXMIG_BENCH_PROCESSES", "2"))
MIDDLEWARE = []
ROOT_URLCONF = "bench.tenants_settings"
urlpatterns = []
