#!/usr/bin/env python
"""Server time of the admin's MigrationRecord pages, measured with Django's test client.

    DATABASE_URL=... DJANGO_SETTINGS_MODULE=bench.settings python bench/admin_timing.py TREE_DIR [--runs 10]

The database must hold Django's contrib tables and the tracking table (``bench/run.py --quick``
prepares one: every migration of TREE_DIR recorded with ``sqlmigrate_up --fake``). A superuser
is created (and deleted afterwards); the changelist and one record's detail page are each
requested ``--runs`` times after one untimed request (imports, template compilation), and the
medians, the number of queries per request and the number of records print as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tree", help="The migrations directory the records were made from.")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django
    from django.conf import settings

    django.setup()
    settings.NIXMIG = {**getattr(settings, "NIXMIG", {}), "MIGRATIONS_DIR": args.tree}
    settings.ALLOWED_HOSTS = ["*"]
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from nixmig.models import MigrationRecord

    setup_test_environment()
    user, _ = User.objects.get_or_create(
        username="nixmig-bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    try:
        client = Client()
        client.force_login(user)
        records = MigrationRecord.objects.count()
        some = MigrationRecord.objects.order_by("id").values_list("pk", flat=True)[records // 2]
        pages = {
            "changelist": "/admin/nixmig/migrationrecord/",
            "detail": f"/admin/nixmig/migrationrecord/{some}/change/",
        }
        out = {"records": records}
        for label, url in pages.items():
            response = client.get(url)  # untimed: imports, template compilation
            assert response.status_code == 200, (url, response.status_code)
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                with CaptureQueriesContext(connection) as queries:
                    response = client.get(url)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200
            out[label] = {
                "median_ms": statistics.median(times) * 1000,
                "min_ms": min(times) * 1000,
                "max_ms": max(times) * 1000,
                "runs": len(times),
                "queries": len(queries),
            }
        print(json.dumps(out))
    finally:
        user.delete()


if __name__ == "__main__":
    main()
