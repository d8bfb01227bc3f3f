"""Issue 14: one SQL tree rolled out to many targets (schemas, databases, servers), with per-target reports."""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from conftest import ScratchDB, _url
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from nixmig import api, rollout
from nixmig.exceptions import NixmigError
from nixmig.targets import Target, TargetError, parse_targets, without_password

TENANTS = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def tenant_tree(tree):
    """Three migrations with unqualified names, and one write to a shared table qualified with public."""
    tree.pair(
        "auth/001_create_users",
        "CREATE TABLE users (id serial PRIMARY KEY, name text);\n",
        "DROP TABLE users;\n",
    )
    tree.pair(
        "orgs/002_create_orgs",
        "CREATE TABLE orgs (id serial PRIMARY KEY, owner int REFERENCES users);\n",
        "DROP TABLE orgs;\n",
    )
    tree.pair(
        "auth/003_create_tokens",
        "CREATE TABLE tokens (id serial PRIMARY KEY, user_id int REFERENCES users);\n"
        "INSERT INTO public.tenant_log (tenant) VALUES (current_schema());\n",
        "DROP TABLE tokens;\nDELETE FROM public.tenant_log WHERE tenant = current_schema();\n",
    )
    return tree


def make_schemas(db: ScratchDB, count: int, prefix: str = "tenant_") -> list[str]:
    names = [f"{prefix}{i:04d}" for i in range(1, count + 1)]
    db.sql(
        "CREATE TABLE IF NOT EXISTS public.tenant_log (tenant text NOT NULL); "
        + " ".join(f'CREATE SCHEMA "{n}";' for n in names)
    )
    return names


def run(db: ScratchDB, command: str, **options) -> tuple[str, str, int]:
    """call_command with no default database (the target options say where); return (out, err, rc)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, stdout=out, stderr=err, **options)
        rc = 0
    except CommandError as exc:
        err.write(str(exc))
        rc = exc.returncode
    return out.getvalue(), err.getvalue(), rc


def recorded(db: ScratchDB, schema: str) -> list[str]:
    """Return the migrations recorded in ``schema``'s tracking table ([] when it has none)."""
    if not db.value("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".migrations']):
        return []
    return [f"{m}/{n}" for m, n in db.sql(f'SELECT module, name FROM "{schema}".migrations ORDER BY id')]


def truth(db: ScratchDB, schemas: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Per schema: (recorded migrations, migrations whose table exists), in one pass."""
    tables = {}
    for schema, table in db.sql(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname LIKE 'tenant\\_%'"
    ):
        tables.setdefault(schema, set()).add(table)
    by_table = {
        "users": "auth/001_create_users",
        "orgs": "orgs/002_create_orgs",
        "tokens": "auth/003_create_tokens",
    }
    out = {}
    for schema in schemas:
        present = [mid for table, mid in by_table.items() if table in tables.get(schema, set())]
        out[schema] = (sorted(recorded(db, schema)), sorted(present))
    return out


def assert_recorded_iff_present(db: ScratchDB, schemas: list[str]) -> None:
    for schema, (rows, present) in truth(db, schemas).items():
        assert rows == present, f"{schema}: recorded {rows}, tables of {present}"
        progress = db.value("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".migrations_progress'])
        if progress:
            assert db.value(f'SELECT count(*) FROM "{schema}".migrations_progress') == 0, schema


def lines(out: str) -> list[str]:
    return re.findall(r"^\[(\d+)/(\d+)\] (.+?) \.\.\. (.*)$", out, flags=re.M)


# -- schemas ---------------------------------------------------------------------------------


def test_200_schemas_in_one_database_each_get_their_own_tables_records_and_one_line(scratch_db, tenant_tree):
    schemas = make_schemas(scratch_db, 200)
    main_pid = scratch_db.value("SELECT pg_backend_pid()")
    peak, stop = [0], threading.Event()

    def sample():  # connections migrating a target (named by the lock), beside this test's own and the sampler's
        while not stop.is_set():
            n = scratch_db.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid NOT IN (pg_backend_pid(), %s) "
                "AND application_name LIKE 'nixmig sqlmigrate_up %%'",
                [main_pid],
            )
            peak[0] = max(peak[0], n)
            time.sleep(0.005)
        connections[scratch_db.alias].close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out, err, rc = run(
            scratch_db,
            "sqlmigrate_up",
            dir=str(tenant_tree),
            database=[scratch_db.alias],
            schemas_query=TENANTS,
            parallel=4,
        )
    finally:
        stop.set()
        sampler.join()
    assert rc == 0, err
    done = lines(out)
    assert [int(k) for k, *_ in done] == list(range(1, 201))  # a live count, one line per finished target
    assert sorted(label for _, _, label, _ in done) == schemas
    assert all(re.fullmatch(r"3 applied in \d+\.\d s", text) for *_, text in done)
    assert re.search(
        r"^Summary: 200 target\(s\): 200 done, 0 up to date, 0 failed, 0 skipped in \d+\.\d s\.$",
        out,
        flags=re.M,
    )
    assert 2 <= peak[0] <= 4  # bounded pool: never more than --parallel connections to the server
    assert_recorded_iff_present(scratch_db, schemas)
    assert all(len(rows) == 3 for rows, _ in truth(scratch_db, schemas).values())
    assert scratch_db.tables() == {"tenant_log"}  # nothing unqualified landed in public
    assert (
        scratch_db.value("SELECT count(DISTINCT tenant) FROM public.tenant_log") == 200
    )  # shared, qualified
    # The tracking table of each schema says so to status, and a second run has nothing to do.
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_status",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        parallel=4,
        check=True,
    )
    assert rc == 0, err
    assert "Summary: 200 target(s): 0 not up to date, 200 up to date, 0 failed" in out
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        parallel=4,
    )
    assert rc == 0 and "200 target(s): 0 done, 200 up to date" in out


def test_a_schema_target_runs_with_its_schema_first_and_keeps_its_lock_apart(scratch_db, tenant_tree):
    make_schemas(scratch_db, 2)
    holder = psycopg.connect(scratch_db.url.replace("postgres://", "postgresql://"), autocommit=True)
    try:  # another runner holds tenant_0001's lock: tenant_0002 goes on, tenant_0001 gives up
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s || current_database(), 0))",
            ["nixmig:tenant_0001.migrations:"],
        )
        out, err, rc = run(
            scratch_db,
            "sqlmigrate_up",
            dir=str(tenant_tree),
            database=[scratch_db.alias],
            schemas=["tenant_0001", "tenant_0002"],
            lock_wait=0,
            on_error="continue",
        )
    finally:
        holder.close()
    assert rc == 1
    assert f"Target {scratch_db.alias}:tenant_0001: Gave up after waiting 0 s for the migration lock" in err
    assert recorded(scratch_db, "tenant_0001") == []
    assert len(recorded(scratch_db, "tenant_0002")) == 3
    assert api.status(directory=tenant_tree.path, database=scratch_db.alias, schema="tenant_0002").ok
    assert [r.name for r in api.applied_migrations(scratch_db.alias, schema="tenant_0002")] == [
        "001_create_users",
        "002_create_orgs",
        "003_create_tokens",
    ]


def test_a_missing_schema_is_refused_unless_create_schemas(scratch_db, tenant_tree):
    make_schemas(scratch_db, 0)
    out, err, rc = run(
        scratch_db, "sqlmigrate_up", dir=str(tenant_tree), database=[scratch_db.alias], schemas=["acme"]
    )
    assert rc == 1
    assert err.startswith(
        f"Schema 'acme' does not exist in database '{scratch_db.alias}' ({scratch_db.name}); "
        "nothing was run there. Create it first, pass --create-schemas"
    )
    assert scratch_db.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'acme'") == 0
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas=["acme"],
        create_schemas=True,
    )
    assert rc == 0, err
    assert recorded(scratch_db, "acme") == [
        "auth/001_create_users",
        "orgs/002_create_orgs",
        "auth/003_create_tokens",
    ]


def test_a_no_transaction_file_resumes_in_its_schema(scratch_db, tenant_tree):
    tenant_tree.pair(
        "auth/004_index_tokens",
        "-- nixmig:no-transaction\n"
        "CREATE INDEX CONCURRENTLY tokens_user ON tokens (user_id);\n"
        "CREATE TABLE later (id int);\n",
        None,
    )
    schemas = make_schemas(scratch_db, 3)
    scratch_db.sql("CREATE TABLE tenant_0002.later (id int)")  # statement 2 fails there
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        on_error="continue",
    )
    assert rc == 1
    assert 'relation "later" already exists (SQLSTATE 42P07)' in err
    assert scratch_db.value("SELECT statements_done FROM tenant_0002.migrations_progress") == 1
    assert len(recorded(scratch_db, "tenant_0001")) == len(recorded(scratch_db, "tenant_0003")) == 4
    scratch_db.sql("DROP TABLE tenant_0002.later")
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas=["tenant_0002"],
        verbosity=1,
    )
    assert rc == 0, err
    assert "resuming at statement 2 of 2" in out
    indexes = scratch_db.sql(
        "SELECT schemaname, indexname FROM pg_indexes WHERE indexname = 'tokens_user' ORDER BY 1"
    )
    assert indexes == [(s, "tokens_user") for s in schemas]  # one per schema, none in public
    assert scratch_db.value("SELECT count(*) FROM tenant_0002.migrations_progress") == 0
    assert scratch_db.value("SHOW search_path") == '"$user", public'  # the session's search_path was reset


def test_down_and_status_json_over_schemas(scratch_db, tenant_tree):
    make_schemas(scratch_db, 3)
    run(scratch_db, "sqlmigrate_up", dir=str(tenant_tree), database=[scratch_db.alias], schemas_query=TENANTS)
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_down",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        parallel=2,
    )
    assert rc == 0, err
    assert "Summary: 3 target(s): 3 rolled back, 0 up to date, 0 failed, 0 skipped" in out
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_status",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        json=True,
    )
    data = json.loads(out)
    assert sorted(data) == [f"{scratch_db.alias}:tenant_000{i}" for i in (1, 2, 3)]
    assert all(d["summary"]["pending"] == 1 and d["summary"]["applied"] == 2 for d in data.values())
    assert scratch_db.value("SELECT count(*) FROM public.tenant_log") == 0  # the down files' shared part ran


# -- databases and servers --------------------------------------------------------------------


@pytest.fixture
def server_dbs(django_db_blocker):
    """Make databases on a server (its settings; default: the suite's) without Django aliases."""
    made: list[tuple[dict, str]] = []

    def make(count: int, settings: dict | None = None) -> list[str]:
        settings = settings or connections["default"].settings_dict
        with psycopg.connect(
            _url(settings, "postgres").replace("postgres://", "postgresql://"), autocommit=True
        ) as admin:
            urls = []
            for _ in range(count):
                name = f"nixmig_t_{uuid.uuid4().hex[:12]}"
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                made.append((settings, name))
                urls.append(_url(settings, name))
        return urls

    def drop(made_one: tuple[dict, str]) -> None:
        settings, name = made_one
        with psycopg.connect(
            _url(settings, "postgres").replace("postgres://", "postgresql://"), autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with django_db_blocker.unblock():
        yield make
    with ThreadPoolExecutor(4) as pool:  # one at a time, 20 drops take 15 s on a busy machine
        list(pool.map(drop, made))


def db_truth(url: str) -> tuple[list[str], int]:
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute("SELECT module || '/' || name FROM migrations ORDER BY id").fetchall()
        return [r[0] for r in rows], conn.info.server_version


def test_20_databases_on_the_local_server_from_a_targets_file(scratch_db, tenant_tree, server_dbs, tmp_path):
    urls = server_dbs(20)
    for url in urls:
        with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute("CREATE TABLE tenant_log (tenant text)")
    targets = tmp_path / "targets.txt"
    targets.write_text("# one database per tenant\n" + "\n".join(urls) + "\n")
    report = tmp_path / "report.json"
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        targets_file=str(targets),
        parallel=4,
        report=str(report),
    )
    assert rc == 0, err
    assert len(lines(out)) == 20
    assert all(
        db_truth(url)[0] == ["auth/001_create_users", "orgs/002_create_orgs", "auth/003_create_tokens"]
        for url in urls
    )
    data = json.loads(report.read_text())
    assert data["counts"]["done"] == 20 and data["stopped"] is None
    assert [t["target"] for t in data["targets"]] == urls
    assert all(
        t["status"] == "done" and len(t["applied"]) == 3 and t["error"] is None for t in data["targets"]
    )
    assert not [a for a in connections.settings if a.startswith("nixmig_target_")]  # temporary aliases gone


def test_a_mix_of_schemas_databases_and_urls_in_one_rollout(scratch_db, tenant_tree, server_dbs, tmp_path):
    schemas = make_schemas(scratch_db, 3)
    url_a, url_b = server_dbs(2)
    with psycopg.connect(url_b.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shop; CREATE TABLE public.tenant_log (tenant text)")
    with psycopg.connect(url_a.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.tenant_log (tenant text)")
    targets = tmp_path / "targets.txt"
    targets.write_text(
        f"{scratch_db.alias}:tenant_0001\n{scratch_db.alias}:tenant_0002  # inline comment\n"
        f"{url_a}\n{url_b} shop\n"
    )
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas=["tenant_0003"],
        targets_file=str(targets),
        parallel=3,
    )
    assert rc == 0, err
    assert sorted(label for _, _, label, _ in lines(out)) == sorted(
        [f"{scratch_db.alias}:{s}" for s in schemas] + [url_a, f"{url_b} shop"]
    )
    assert_recorded_iff_present(scratch_db, schemas)
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
    assert len(db_truth(url_a)[0]) == 3
    with psycopg.connect(url_b.replace("postgres://", "postgresql://")) as conn:
        assert conn.execute("SELECT count(*) FROM shop.migrations").fetchone()[0] == 3
        assert conn.execute("SELECT to_regclass('public.migrations')").fetchone()[0] is None


def _other_server(default: dict) -> tuple[dict, str]:
    """Return the settings of the server the suite does not run on: PostgreSQL 15 or the embedded 18."""
    if str(default.get("PORT")) == "5432" and default.get("HOST") in ("127.0.0.1", "localhost"):
        try:
            from project import embedded

            socket_dir, port = embedded.start()
        except (ImportError, SystemExit, Exception) as exc:  # noqa: BLE001 - any reason to skip is reported
            pytest.skip(f"the embedded PostgreSQL 18 can't start here ({exc})")
        return {"HOST": socket_dir, "PORT": str(port), "USER": "postgres", "PASSWORD": ""}, "embedded 18"
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL answers at 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]})")
    return {"HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres", "PASSWORD": ""}, "PostgreSQL 15"


def test_two_databases_on_different_servers_in_one_rollout(scratch_db, tenant_tree, server_dbs, tmp_path):
    other, _ = _other_server(connections["default"].settings_dict)
    (here,) = server_dbs(1)
    (there,) = server_dbs(1, other)
    for url in (here, there):
        with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute("CREATE TABLE tenant_log (tenant text)")
    targets = tmp_path / "targets.txt"
    targets.write_text(f"{here}\n{there}\n")
    out, err, rc = run(
        scratch_db, "sqlmigrate_up", dir=str(tenant_tree), targets_file=str(targets), parallel=2
    )
    assert rc == 0, err
    (rows_here, version_here), (rows_there, version_there) = db_truth(here), db_truth(there)
    assert rows_here == rows_there and len(rows_here) == 3
    with psycopg.connect(there.replace("postgres://", "postgresql://")) as conn:
        other_version = conn.info.server_version
    assert (version_here, version_there) == (connections["default"].pg_version, other_version)
    assert version_here // 10000 != version_there // 10000  # two servers, not two names for one


# -- failures, canaries, re-runs -------------------------------------------------------------


def test_a_failing_tenant_stops_the_rollout_and_only_failed_finishes_it(scratch_db, tenant_tree, tmp_path):
    schemas = make_schemas(scratch_db, 10)
    scratch_db.sql("CREATE TYPE tenant_0005.orgs AS ENUM ('x')")  # 002 fails in the fifth tenant
    report = tmp_path / "report.json"
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        report=str(report),
    )
    assert rc == 1
    assert [label for _, _, label, _ in lines(out)] == schemas[:5]
    assert lines(out)[4][3].startswith("FAILED at orgs/002_create_orgs (SQLSTATE 42710) in ")
    assert (
        "Stopping: " + f"{scratch_db.alias}:tenant_0005 failed; no more targets start (--on-error stop)"
        in err
    )
    assert err.rstrip().endswith(
        f"1 of 10 target(s) failed: {scratch_db.alias}:tenant_0005. 5 not started (--on-error stop); see each "
        f"target's error above, fix it and run again. Run again with --only-failed {report} to run only the "
        "failed, interrupted and not started ones."
    )
    assert "Summary: 10 target(s): 4 done, 0 up to date, 1 failed, 5 skipped (5 not started)" in out
    data = json.loads(report.read_text())
    statuses = [t["status"] for t in data["targets"]]
    assert statuses == ["done"] * 4 + ["failed"] + ["not_started"] * 5
    failed = data["targets"][4]
    assert failed["applied"] == ["auth/001_create_users"]
    assert failed["error"]["migration"] == "orgs/002_create_orgs"
    assert failed["error"]["sqlstate"] == "42710"
    assert failed["error"]["file"].endswith("orgs/002_create_orgs_up.sql") and failed["error"]["line"] == 1
    assert data["targets"][5]["reason"] == "another target failed (--on-error stop)"
    assert_recorded_iff_present(scratch_db, schemas)
    assert all(recorded(scratch_db, s) == [] for s in schemas[5:])  # left alone

    scratch_db.sql("DROP TYPE tenant_0005.orgs")
    again = tmp_path / "again.json"
    out, err, rc = run(
        scratch_db, "sqlmigrate_up", dir=str(tenant_tree), only_failed=str(report), report=str(again)
    )
    assert rc == 0, err
    assert [label for _, _, label, _ in lines(out)] == schemas[4:]
    assert [t["status"] for t in json.loads(again.read_text())["targets"]] == ["done"] * 6
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
    out, err, rc = run(scratch_db, "sqlmigrate_up", dir=str(tenant_tree), only_failed=str(again))
    assert (out, rc) == (
        f"Nothing to run again: no target of {again} failed, was interrupted or was left not started.\n",
        0,
    )


def test_continue_runs_every_other_tenant(scratch_db, tenant_tree):
    schemas = make_schemas(scratch_db, 10)
    scratch_db.sql("CREATE TYPE tenant_0005.orgs AS ENUM ('x')")
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        on_error="continue",
        parallel=3,
    )
    assert rc == 1
    assert len(lines(out)) == 10
    assert "Summary: 10 target(s): 9 done, 0 up to date, 1 failed, 0 skipped" in out
    assert f"1 of 10 target(s) failed: {scratch_db.alias}:tenant_0005. The others are done; see" in err
    assert_recorded_iff_present(scratch_db, schemas)
    assert recorded(scratch_db, "tenant_0005") == ["auth/001_create_users"]


def test_a_canary_failure_stops_the_rollout_before_the_others(scratch_db, tenant_tree, tmp_path):
    schemas = make_schemas(scratch_db, 8)
    scratch_db.sql("CREATE TYPE tenant_0007.orgs AS ENUM ('x')")
    targets = tmp_path / "targets.txt"  # canaries marked in the file: the 2nd and the 7th
    targets.write_text(
        "\n".join(
            f"{scratch_db.alias}:{s}" + (" [canary]" if s in ("tenant_0002", "tenant_0007") else "")
            for s in schemas
        )
        + "\n"
    )
    report = tmp_path / "report.json"
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        targets_file=str(targets),
        report=str(report),
        on_error="continue",
        parallel=2,
    )
    assert rc == 1
    assert out.startswith("Canary: 2 target(s) first.\n")
    assert sorted(label for _, _, label, _ in lines(out)) == ["tenant_0002", "tenant_0007"]
    assert err.rstrip().endswith(
        f"A canary failed ({scratch_db.alias}:tenant_0007); the rollout stopped there: "
        "6 target(s) not started. See each target's error above, fix it and run again. "
        f"Run again with --only-failed {report} to run only the failed, interrupted and "
        "not started ones."
    )
    data = json.loads(report.read_text())
    assert data["stopped"] == "canary"
    assert [(t["target"].split(":")[1], t["status"]) for t in data["targets"] if t["canary"]] == [
        ("tenant_0002", "done"),
        ("tenant_0007", "failed"),
    ]
    assert {t["reason"] for t in data["targets"] if t["status"] == "not_started"} == {
        "a canary target failed"
    }
    assert [s for s in schemas if recorded(scratch_db, s)] == ["tenant_0002", "tenant_0007"]
    # --canary K takes the first K when none is marked; passing canaries let the rest run.
    scratch_db.sql("DROP TYPE tenant_0007.orgs")
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
        canary=3,
    )
    assert rc == 0, err
    assert "Canary: 3 target(s) first.\n" in out and "Canary passed; the other 5 target(s):\n" in out
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)


def test_ctrl_c_during_a_rollout_leaves_nothing_half_done_and_writes_the_report(
    scratch_db, tenant_tree, tmp_path
):
    tenant_tree.write(
        "orgs/002_create_orgs_up.sql",
        "SELECT pg_sleep(0.15);\nCREATE TABLE orgs (id serial PRIMARY KEY, owner int REFERENCES users);\n",
    )
    schemas = make_schemas(scratch_db, 40)
    report = tmp_path / "report.json"
    proc = scratch_db.popen(
        "sqlmigrate_up",
        "--dir",
        str(tenant_tree),
        "--schemas-from",
        TENANTS,
        "--parallel",
        "2",
        "--report",
        str(report),
    )
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let a few targets finish, then press Ctrl-C mid-rollout
        seen += proc.stdout.readline()
        if len(re.findall(r"^\[\d+/40\]", seen, flags=re.M)) >= 3 or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    out = seen + out
    assert proc.returncode == 130, err
    assert (
        "Interrupted (Ctrl-C): no more targets start, and running ones stop before their next migration"
        in err
    )
    assert "nothing is half-done" in err
    data = json.loads(report.read_text())
    assert data["stopped"] == "interrupt"
    statuses = [t["status"] for t in data["targets"]]
    assert set(statuses) <= {"done", "interrupted", "not_started"}
    assert statuses.count("not_started") >= 20  # most never started
    assert 3 <= statuses.count("done") < 40
    assert_recorded_iff_present(scratch_db, schemas)  # every schema: recorded iff its tables exist
    for t in data["targets"]:
        assert sorted(t["applied"]) == sorted(recorded(scratch_db, t["schema"])), t
    assert (
        scratch_db.value(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        == 0
    )


# -- the targets file and reports, without a database ------------------------------------------


def test_targets_file_lines_parse_to_targets_and_bad_lines_name_their_line():
    specs = parse_targets(
        "# tenants\n\ndefault\ndefault:tenant_1 [canary]\npostgres://u:pw@db:5433/app\n"
        "postgresql://u@db/app shop  # a comment\n",
        "t.txt",
    )
    assert [(s.database, s.schema, s.canary, s.line) for s in specs] == [
        ("default", None, False, 3),
        ("default", "tenant_1", True, 4),
        ("postgres://u:pw@db:5433/app", None, False, 5),
        ("postgresql://u@db/app", "shop", False, 6),
    ]
    assert without_password("postgres://u:pw@db:5433/app") == "postgres://u@db:5433/app"
    assert (
        Target("x", "s").key == "x:s"
        and Target("a", "s", "postgres://u@db/app").key == "postgres://u@db/app s"
    )
    for text, message in [
        ("default\nmysql://u@h/db\n", "t.txt line 2: 'mysql' URLs are not PostgreSQL"),
        (
            "default tenant_1\n",
            "t.txt line 1: write a schema of a database alias as 'alias:schema' (default:tenant_1)",
        ),
        ("default:a.b\n", "t.txt line 1: the schema name 'a.b' contains a '.'"),
        ("a b c\n", "t.txt line 1: 'a b c' is not a target."),
    ]:
        with pytest.raises(TargetError) as info:
            parse_targets(text, "t.txt")
        assert str(info.value).startswith(message)


def test_bad_target_options_are_clear_errors_before_anything_runs(scratch_db, tenant_tree, tmp_path):
    bad = tmp_path / "targets.txt"
    bad.write_text(f"{scratch_db.alias}\nnope:tenant_1\n")
    out, err, rc = run(scratch_db, "sqlmigrate_up", dir=str(tenant_tree), targets_file=str(bad))
    assert rc == 1 and err.startswith(f"{bad} line 2: there is no database 'nope' in settings.DATABASES")
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query="SELECT nope FROM nowhere",
    )
    assert rc == 1 and err.startswith(
        f"--schemas-from: the query failed on database '{scratch_db.alias}' "
        '(relation "nowhere" does not exist'
    )
    not_json = tmp_path / "report.json"
    not_json.write_text("{")
    out, err, rc = run(scratch_db, "sqlmigrate_up", dir=str(tenant_tree), only_failed=str(not_json))
    assert rc == 1 and err.startswith(f"{not_json} is not a nixmig rollout report")
    assert scratch_db.tables() == set()


def test_targets_from_the_setting(scratch_db, tenant_tree, settings):
    make_schemas(scratch_db, 2)
    settings.NIXMIG = {
        **settings.NIXMIG,
        "TARGETS": lambda: [(scratch_db.alias, "tenant_0001"), f"{scratch_db.alias}:tenant_0002"],
    }
    out, err, rc = run(scratch_db, "sqlmigrate_up", dir=str(tenant_tree))
    assert rc == 0, err
    assert len(recorded(scratch_db, "tenant_0001")) == len(recorded(scratch_db, "tenant_0002")) == 3


def test_rollout_engine_reports_every_target_in_order():
    calls = []

    def job(target, progress):
        calls.append(target.key)
        if target.key == "b":
            raise NixmigError("b is broken")
        return rollout.Outcome(rollout.DONE, ["m1"], "ok", "ok")

    result = rollout.run([Target(k) for k in "abcd"], job, on_error="continue", skipped=[("e", "routers")])
    assert calls == ["a", "b", "c", "d"]
    assert [r.status for r in result.results] == ["done", "failed", "done", "done", "skipped"]
    assert result.results[1].error["message"] == "b is broken"
    assert result.summary().startswith("5 target(s): 3 done, 0 up to date, 1 failed, 1 skipped in ")


# -- lint and verify take the same target options ---------------------------------------------


def test_lint_goes_over_the_pending_migrations_of_each_schema(scratch_db, tenant_tree):
    make_schemas(scratch_db, 2)
    run(
        scratch_db,
        "sqlmigrate_up",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas=["tenant_0001"],
    )
    # a table with rows: an index built on it locks (the linter finds nothing to lock on an empty one)
    scratch_db.sql("INSERT INTO tenant_0001.orgs (owner) SELECT NULL FROM generate_series(1, 20000)")
    scratch_db.sql("ANALYZE tenant_0001.orgs")
    tenant_tree.pair(
        "orgs/004_index_orgs", "CREATE INDEX orgs_owner ON orgs (owner);\n", "DROP INDEX orgs_owner;\n"
    )
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_lint",
        dir=str(tenant_tree),
        database=[scratch_db.alias],
        schemas_query=TENANTS,
    )
    assert rc == 1
    found = {label: text for _, _, label, text in lines(out)}
    assert found["tenant_0001"].startswith(
        "FAILED"
    )  # only 004 is pending there: an index on an existing table
    assert found["tenant_0002"] == "no findings"  # there 004 indexes a table the same plan creates
    assert f"Target {scratch_db.alias}:tenant_0001: Lint found 1 error(s)." in err
    assert "Summary: 2 target(s): 0 with findings, 1 up to date, 1 failed, 0 skipped" in out


def test_verify_checks_each_database_target_and_each_schema_target(scratch_db, tree, server_dbs, tmp_path):
    for i, table in enumerate(("users", "orgs", "tokens"), 1):
        tree.table_pair(f"app/00{i}_create_{table}", table)
    make_schemas(scratch_db, 1)
    out, err, rc = run(
        scratch_db,
        "sqlmigrate_verify",
        dir=str(tree),
        database=[scratch_db.alias],
        schemas=["tenant_0001"],
        json=True,
    )
    assert rc == 0, err
    assert json.loads(out)["counts"]["exact"] == 3
    urls = server_dbs(2)
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(urls) + "\n")
    out, err, rc = run(scratch_db, "sqlmigrate_verify", dir=str(tree), targets_file=str(targets), json=True)
    assert rc == 0, err
    data = json.loads(out)
    assert sorted(data) == sorted(urls)
    assert all(d["ok"] and d["counts"]["exact"] == 3 for d in data.values())


def test_a_failing_canary_stops_the_rollout_whatever_on_error_says():
    def job(target, progress):
        if target.key == "b":
            raise NixmigError("b is broken")
        return rollout.Outcome(rollout.DONE, [], "ok", "ok")

    for on_error in ("stop", "continue"):
        result = rollout.run([Target(k) for k in "abcde"], job, canary=3, on_error=on_error)
        assert result.stopped == "canary"
        assert [r.status for r in result.results] == [
            "done",
            "failed",
            "not_started",
            "not_started",
            "not_started",
        ]
        assert result.results[2].reason == "a canary target failed"
