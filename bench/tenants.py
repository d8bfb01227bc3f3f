"""Many tenants: the 14-migration sample (migrations_sql/) to N schemas of one database.

    python bench/tenants.py [--tenants 1000] [--parallel 1,4,8] [--rounds 1] [--tools nixmig,django-tenants]

Per round and per --parallel P, each tool gets a fresh database with N empty schemas
(t_0001 ...; the uuid-ossp extension in public, as a tenant setup shares it), in
alternating order, and applies the tree to every schema:

- nixmig: ``manage.py sqlmigrate_up --schemas-from "SELECT ..." --parallel P``;
- django-tenants (if installed; ``pip install django-tenants``):
  ``manage.py migrate_schemas --tenant --executor=multiprocessing`` with
  TENANT_MULTIPROCESSING_MAX_PROCESSES = P (``--executor=standard`` for P = 1), the tenant
  app holding one RunSQL migration per SQL file (bench/tenants_settings.py).

Then status over the N schemas: ``sqlmigrate_status --schemas-from ... --parallel P``
against django-tenants' ``all_tenants_command showmigrations tenantsql``.

Printed: wall time of each command (process start included) and throughput in targets
per second, medians over the rounds, and nixmig's ratio to django-tenants measured in
the same run. Each run is checked: every schema must hold the 14 migrations' tables.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TREE = ROOT / "migrations_sql"
DB = "nixmig_bench_tenants"
SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%' ORDER BY 1"


def server() -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.conf import settings

    return dict(settings.DATABASES["default"])


def url(settings: dict, name: str) -> str:
    host = settings.get("HOST") or ""
    host = quote(host, safe="") if host.startswith("/") else host
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    password = f":{quote(settings['PASSWORD'], safe='')}" if settings.get("PASSWORD") else ""
    return f"postgresql://{settings.get('USER') or ''}{password}@{host}{port}/{name}"


def sql(settings: dict, name: str, query: str, *, fetch: bool = False):
    import psycopg

    with psycopg.connect(url(settings, name), autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if fetch else None


def fresh(settings: dict, tenants: int) -> None:
    """A new database with ``tenants`` empty schemas and the uuid-ossp extension in public."""
    sql(settings, "postgres", f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    sql(settings, "postgres", f'CREATE DATABASE "{DB}" TEMPLATE template0')
    sql(
        settings,
        DB,
        'CREATE EXTENSION IF NOT EXISTS "uuid-ossp" SCHEMA public; '
        + " ".join(f"CREATE SCHEMA t_{i:04d};" for i in range(1, tenants + 1)),
    )


def tables_per_schema(settings: dict) -> dict[int, int]:
    """Return {number of tables: number of schemas with that many} over the t_ schemas (tracking tables left out)."""
    rows = sql(
        settings,
        DB,
        "SELECT n, count(*) FROM (SELECT n.nspname, count(c.relname) AS n FROM pg_namespace n "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r' AND c.relname NOT IN "
        "('migrations', 'migrations_progress', 'django_migrations') WHERE n.nspname LIKE 't\\_%' "
        "GROUP BY 1) s GROUP BY n",
        fetch=True,
    )
    return dict(rows)


def manage(settings: dict, *args: str, env: dict | None = None) -> tuple[float, str]:
    environ = dict(
        os.environ,
        DATABASE_URL=url(settings, DB).replace("postgresql://", "postgres://", 1),
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return seconds, proc.stdout


def write_django_migrations(folder: Path) -> None:
    """One RunSQL migration per SQL file of the sample tree, in nixmig's order."""
    import django  # noqa: F401 - server() set it up

    from nixmig.tree import load_tree

    pkg = folder / "bench_tenant_sql_migrations"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    previous = None
    for i, m in enumerate(load_tree(TREE).migrations, 1):
        name = f"{i:04d}_{m.module.replace('-', '_').replace('/', '_')}_{m.name[4:]}"
        up = m.up.path.read_text()
        down = m.down.path.read_text() if m.down else ""
        deps = f"[('tenantsql', {previous!r})]" if previous else "[]"
        (pkg / f"{name}.py").write_text(
            "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
            f"    dependencies = {deps}\n    operations = [migrations.RunSQL({up!r}, {down!r})]\n"
        )
        previous = name


def run_nixmig(settings: dict, tenants: int, parallel: int) -> dict:
    fresh(settings, tenants)
    up, out = manage(
        settings, "sqlmigrate_up", "--dir", str(TREE), "--schemas-from", SCHEMAS, "--parallel", str(parallel)
    )
    engine = float(re.search(r"^Summary: .* in (\d+\.\d) s\.$", out, flags=re.M).group(1))
    check(settings, tenants, "nixmig")
    status, out = manage(
        settings,
        "sqlmigrate_status",
        "--dir",
        str(TREE),
        "--schemas-from",
        SCHEMAS,
        "--parallel",
        str(parallel),
        "--check",
    )
    assert f"{tenants} up to date" in out, out[-500:]
    return {"up": up, "engine": engine, "status": status}


def run_django_tenants(
    settings: dict, tenants: int, parallel: int, folder: Path, status: bool = True
) -> dict:
    fresh(settings, tenants)
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.tenants_settings",
        "NIXMIG_BENCH_TENANTS_PATH": str(folder),
        "NIXMIG_BENCH_PROCESSES": str(parallel),
    }
    manage(settings, "migrate_schemas", "--shared", "--noinput", "-v", "0", env=env)
    sql(
        settings,
        DB,
        "INSERT INTO tenantsapp_client (schema_name, name) SELECT format('t_%s', "
        f"lpad(i::text, 4, '0')), 'tenant ' || i FROM generate_series(1, {tenants}) i",
    )
    executor = "multiprocessing" if parallel > 1 else "standard"
    up, _ = manage(
        settings, "migrate_schemas", "--tenant", f"--executor={executor}", "--noinput", "-v", "0", env=env
    )
    check(settings, tenants, "django-tenants")
    if not status:
        return {"up": up, "status": None}
    seconds, out = manage(settings, "all_tenants_command", "showmigrations", "tenantsql", env=env)
    assert out.count("[X]") == tenants * len(list(TREE.rglob("*_up.sql"))), out[-500:]
    return {"up": up, "status": seconds}


def check(settings: dict, tenants: int, tool: str) -> None:
    counts = tables_per_schema(settings)
    if set(counts) != {EXPECTED_TABLES[0]} or counts[EXPECTED_TABLES[0]] != tenants:
        raise SystemExit(
            f"{tool}: tables per schema {counts}, expected {EXPECTED_TABLES[0]} in each of {tenants}"
        )


EXPECTED_TABLES = [0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--parallel", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tools", default="nixmig,django-tenants")
    parser.add_argument(
        "--skip-django-tenants-status",
        action="store_true",
        help="Don't time all_tenants_command showmigrations (sequential whatever --parallel says: "
        "one measurement of it is enough, and at 1,000 schemas it takes minutes).",
    )
    args = parser.parse_args()
    settings = server()
    tools = args.tools.split(",")
    if "django-tenants" in tools:
        try:
            import django_tenants  # noqa: F401
        except ImportError:
            print("django-tenants is not installed (pip install django-tenants): nixmig only.")
            tools = [t for t in tools if t != "django-tenants"]
    # The number of tables the tree makes: one schema applied by nixmig.
    fresh(settings, 1)
    manage(settings, "sqlmigrate_up", "--dir", str(TREE), "--schema", "t_0001")
    EXPECTED_TABLES[0] = next(iter(tables_per_schema(settings)))
    from nixmig import api

    version = sql(settings, DB, "SHOW server_version", fetch=True)[0][0]
    print(
        f"{args.tenants} schemas x {len(api.load_tree(TREE).migrations)} migrations "
        f"({EXPECTED_TABLES[0]} tables per schema), PostgreSQL {version}, {os.cpu_count()} CPUs, "
        f"{args.rounds} round(s), tools alternating"
    )
    folder = Path(tempfile.mkdtemp(prefix="nixmig_bench_tenants_"))
    write_django_migrations(folder)
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for parallel in [int(p) for p in args.parallel.split(",")]:
            order = tools if (r + parallel) % 2 == 0 else list(reversed(tools))
            for tool in order:
                if tool == "nixmig":
                    res = run_nixmig(settings, args.tenants, parallel)
                else:
                    res = run_django_tenants(
                        settings, args.tenants, parallel, folder, status=not args.skip_django_tenants_status
                    )
                results.setdefault((tool, parallel), []).append(res)
                status = f"{res['status']:.1f} s" if res["status"] is not None else "not timed"
                print(
                    f"  round {r + 1} {tool:<15} --parallel {parallel}: up {res['up']:.1f} s "
                    f"({args.tenants / res['up']:.1f} targets/s), status {status}",
                    flush=True,
                )
    sql(settings, "postgres", f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    print("\nMedians (wall time of the command, process start included):")
    print(f"  {'tool':<15} {'parallel':>8} {'up s':>8} {'targets/s':>10} {'status s':>9} {'status t/s':>10}")
    for (tool, parallel), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        up = statistics.median(x["up"] for x in runs)
        timed = [x["status"] for x in runs if x["status"] is not None]
        st = (
            f"{statistics.median(timed):>9.1f} {args.tenants / statistics.median(timed):>10.1f}"
            if timed
            else f"{'-':>9} {'-':>10}"
        )
        print(f"  {tool:<15} {parallel:>8} {up:>8.1f} {args.tenants / up:>10.1f} {st}")
    if "django-tenants" in tools and "nixmig" in tools:
        print("\nnixmig vs django-tenants, same run (throughput ratio, >1: nixmig faster):")
        for parallel in sorted({p for _, p in results}):
            n, d = results[("nixmig", parallel)], results[("django-tenants", parallel)]
            up = statistics.median(x["up"] for x in d) / statistics.median(x["up"] for x in n)
            timed = [x["status"] for x in d if x["status"] is not None]
            st = (
                f", status x{statistics.median(timed) / statistics.median(x['status'] for x in n):.2f}"
                if timed
                else ""
            )
            print(f"  --parallel {parallel}: up x{up:.2f}{st}")


if __name__ == "__main__":
    main()
