"""The demo project's settings plus the benchmark's RunSQL app, so every Django command
of the benchmark (nixmig's, ``migrate``, ``showmigrations``, ``version``) runs under the
same settings.

NIXMIG_BENCH_DJANGO_PATH names a folder holding the generated package
``bench_django_migrations`` (one RunSQL migration per SQL file); unset, the app has none.
"""

import os
import sys

from project.settings import *  # noqa: F401,F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
if os.environ.get("NIXMIG_BENCH_BARE"):  # the project without nixmig: Django's own start-up, for --quick
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "nixmig"]

if os.environ.get("NIXMIG_BENCH_NO_CACHE"):  # --quick's cold status: every up file read, as on a new host
    from project.settings import NIXMIG

    NIXMIG = {**NIXMIG, "CHECKSUM_CACHE": False}

_path = os.environ.get("NIXMIG_BENCH_DJANGO_PATH")
if _path:
    sys.path.insert(0, _path)
    MIGRATION_MODULES = {"benchapp": "bench_django_migrations"}
else:
    MIGRATION_MODULES = {"benchapp": None}

# --parallel: NIXMIG_BENCH_DATABASES="alias=dbname,alias=dbname,..." adds databases on the same
# server as 'default' (bench/run.py --quick applies one tree to 16 of them).
_extra = os.environ.get("NIXMIG_BENCH_DATABASES")
if _extra:
    from project.settings import DATABASES

    for _pair in _extra.split(","):
        _alias, _name = _pair.split("=", 1)
        DATABASES[_alias] = {**DATABASES["default"], "NAME": _name}
