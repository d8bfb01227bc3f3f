"""Concurrent deploys and killed runners, with real ``manage.py`` processes against a real PostgreSQL.

No test asserts on timing: every wait is a bounded poll for a state the database reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psycopg
import pytest

LOCK_KEY = "hashtextextended('nixmig:migrations:' || current_database(), 0)"
DEADLINE = 90  # seconds; only reached when something is broken


def _connect(scratch_db, **kwargs) -> psycopg.Connection:
    s = scratch_db.settings
    return psycopg.connect(
        dbname=scratch_db.name,
        host=s.get("HOST") or None,
        port=s.get("PORT") or None,
        user=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        **kwargs,
    )


def _wait_for(scratch_db, query: str, params=None, what: str = "", proc: subprocess.Popen | None = None):
    """Poll ``query`` until it returns a non-empty first value; return that value."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = scratch_db.value(query, params)
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"manage.py exited ({proc.returncode}) before {what}:\n{out}{err}")
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what or query}")


def _runner_backend(scratch_db, proc: subprocess.Popen, extra: str = "") -> int:
    """Return the backend pid of the manage.py process ``proc`` once it is active (and matches ``extra``)."""
    return _wait_for(
        scratch_db,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s "
        f"AND state = 'active' {extra.replace('%', '%%')}",
        [f"nixmig sqlmigrate_up pid={proc.pid} %"],
        f"manage.py pid {proc.pid} to be running ({extra})",
        proc,
    )


def _wait_gone(scratch_db, backend_pid: int) -> None:
    _wait_for(
        scratch_db,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)",
        [backend_pid],
        f"backend {backend_pid} to end",
    )


def _lock_is_free(scratch_db) -> bool:
    return scratch_db.value(
        "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


def _finish(procs, timeout=DEADLINE) -> list[tuple[int, str, str]]:
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _big_tree(tree) -> list[tuple[str, str]]:
    """Write 24 migrations over 4 modules: sleeps, an extension, a no-transaction CIC. Return their ids."""
    ids = []
    tree.pair("core/001_extensions", "CREATE EXTENSION citext;\n", "DROP EXTENSION citext;\n")
    ids.append(("core", "001_extensions"))
    modules = ["auth", "billing", "teams", "audit"]
    for n in range(2, 24):
        module = modules[n % 4]
        name = f"{n:03d}_table_{n}"
        sleep = "SELECT pg_sleep(0.1);\n" if n % 5 == 0 else ""
        tree.pair(
            f"{module}/{name}",
            f"CREATE TABLE t{n} (id serial PRIMARY KEY, email citext);\n{sleep}"
            f"INSERT INTO t{n} (email) VALUES ('A@example.com');\n",
            f"DROP TABLE t{n};\n",
        )
        ids.append((module, name))
    tree.pair(
        "audit/024_concurrent_index",
        "-- nixmig:no-transaction\n"
        "CREATE INDEX CONCURRENTLY t3_email_idx ON t3 (email);\n"
        "CREATE INDEX CONCURRENTLY t4_email_idx ON t4 (email);\n",
        "-- nixmig:no-transaction\nDROP INDEX CONCURRENTLY t3_email_idx;\nDROP INDEX CONCURRENTLY t4_email_idx;\n",
    )
    ids.append(("audit", "024_concurrent_index"))
    return ids


def _needs_extensions(db, *names: str) -> None:
    """Skip where the server has no contrib (the pgserver wheel's PostgreSQL 16 has none)."""
    found = db.value("SELECT count(*) FROM pg_available_extensions WHERE name = ANY(%s)", [list(names)])
    if found != len(names):
        pytest.skip(f"this server lacks the contrib extensions {', '.join(names)}")


def test_six_runners_started_together_apply_every_migration_exactly_once(scratch_db, tree):
    _needs_extensions(scratch_db, "citext")
    ids = _big_tree(tree)
    procs = [scratch_db.popen("sqlmigrate_up", "--dir", str(tree), "--lock-wait", "120") for _ in range(6)]
    results = _finish(procs)

    for rc, _out, err in results:
        assert rc == 0, err
        assert "Traceback" not in err
    applied = [out for rc, out, err in results if f"Applied {len(ids)} migration(s)" in out]
    idle = [out for rc, out, err in results if out.endswith("No migrations to apply.\n")]
    assert (len(applied), len(idle)) == (
        1,
        5,
    )  # the lock winner did everything; the others re-read and found none
    assert sorted(scratch_db.records()) == sorted(ids)
    assert scratch_db.value("SELECT count(*) FROM pg_extension WHERE extname = 'citext'") == 1
    assert (
        scratch_db.value(
            "SELECT count(*) FROM pg_index WHERE indexrelid::regclass::text LIKE 't%_email_idx' "
            "AND indisvalid"
        )
        == 2
    )
    assert _lock_is_free(scratch_db)


def test_runners_and_status_racing_on_a_brand_new_database_create_table_and_extension_once(scratch_db, tree):
    _needs_extensions(scratch_db, "hstore", "pg_trgm")
    tree.pair("core/001_extensions", "CREATE EXTENSION hstore;\nCREATE EXTENSION pg_trgm;\n")
    tree.pair("core/002_settings", "CREATE TABLE settings (id serial PRIMARY KEY, data hstore);\n")
    procs = []
    for i in range(8):  # up and status interleaved: status creates the table too, when the lock is free
        args = ("sqlmigrate_up", "--lock-wait", "120") if i % 2 == 0 else ("sqlmigrate_status", "--json")
        procs.append(scratch_db.popen(*args, "--dir", str(tree)))
    results = _finish(procs)

    for rc, _out, err in results:
        assert rc == 0, err
    for _rc, out, _err in results[1::2]:
        assert {m["state"] for m in json.loads(out)["migrations"]} <= {"applied", "pending"}
    assert scratch_db.records() == [("core", "001_extensions"), ("core", "002_settings")]
    assert scratch_db.value("SELECT count(*) FROM pg_extension WHERE extname IN ('hstore', 'pg_trgm')") == 2
    assert scratch_db.value("SELECT count(*) FROM pg_class WHERE relname = 'migrations'") == 1


def test_killed_runner_leaves_its_migration_unapplied_unrecorded_and_the_lock_free(scratch_db, tree):
    scratch_db.sql("CREATE TABLE nap (seconds float); INSERT INTO nap VALUES (30)")
    tree.table_pair("app/001_first", "first_t")
    tree.pair(
        "app/002_long",
        "CREATE TABLE long_t (id int);\nINSERT INTO long_t VALUES (1);\nSELECT pg_sleep(seconds) FROM nap;\n",
        "DROP TABLE long_t;\n",
    )
    runner = scratch_db.popen("sqlmigrate_up", "--dir", str(tree))
    try:
        backend = _runner_backend(scratch_db, runner, "AND query LIKE '%pg_sleep%'")
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=DEADLINE)
    finally:
        if runner.poll() is None:
            runner.kill()
    # The server notices the client is gone (client_connection_check_interval) and rolls back
    # instead of finishing the sleep and committing behind the dead runner's back.
    _wait_gone(scratch_db, backend)
    assert scratch_db.records() == [("app", "001_first")]
    assert "long_t" not in scratch_db.tables()
    assert _lock_is_free(scratch_db)

    scratch_db.sql("UPDATE nap SET seconds = 0")
    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert "Applying app/002_long... OK" in proc.stdout
    assert scratch_db.records() == [("app", "001_first"), ("app", "002_long")]
    assert scratch_db.value("SELECT count(*) FROM long_t") == 1


def test_killed_runner_in_a_concurrent_index_build_resumes_and_rebuilds_the_index(scratch_db, tree):
    scratch_db.sql("CREATE TABLE items (id int, sku text)")
    tree.pair(
        "shop/001_indexes",
        "-- nixmig:no-transaction\nCREATE INDEX CONCURRENTLY items_id_idx ON items (id);\n"
        "CREATE INDEX CONCURRENTLY items_sku_idx ON items (sku);\n",
        None,
    )
    app = _connect(scratch_db)
    app.execute("INSERT INTO items VALUES (1, 'a')")  # an open write transaction: CIC waits for it
    runner = scratch_db.popen("sqlmigrate_up", "--dir", str(tree))
    try:
        backend = _runner_backend(
            scratch_db, runner, "AND query LIKE '%items_id_idx%' AND wait_event_type = 'Lock'"
        )
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=DEADLINE)
        _wait_gone(scratch_db, backend)
    finally:
        if runner.poll() is None:
            runner.kill()
        app.commit()
        app.close()
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('items_id_idx')")
        is False
    )
    assert scratch_db.records() == []
    assert _lock_is_free(scratch_db)
    status = scratch_db.manage("sqlmigrate_status", "--dir", str(tree))
    assert " [!] 001_indexes" in status.stdout and "partly applied" in status.stdout
    assert (
        "statement 1, which can't run in a transaction, was running when its runner stopped" in status.stdout
    )

    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert "removed the INVALID index public.items_id_idx" in proc.stderr
    assert (
        scratch_db.value("SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND indisvalid")
        == 2
    )
    assert scratch_db.records() == [("shop", "001_indexes")]


def test_waiting_runner_names_the_holder_then_finds_nothing_left_to_do(scratch_db, tree):
    scratch_db.sql("CREATE TABLE gate (id int)")
    tree.pair(
        "app/001_gated",
        "-- nixmig:lock-timeout=2min\nLOCK TABLE gate IN ACCESS SHARE MODE;\nCREATE TABLE gated (id int);\n",
    )
    gate = _connect(scratch_db)
    gate.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
    first = scratch_db.popen("sqlmigrate_up", "--dir", str(tree))
    second = None
    try:
        _runner_backend(scratch_db, first, "AND wait_event_type = 'Lock'")
        second = scratch_db.popen("sqlmigrate_up", "--dir", str(tree), "--lock-wait", "120")
        line = second.stderr.readline()
        assert line.startswith("Waiting for the migration lock, held by pid ")
        assert f"(nixmig sqlmigrate_up pid={first.pid} host=" in line
        assert "giving up after 120 s (--lock-wait)" in line
        gate.commit()
        (rc1, out1, err1), (rc2, out2, err2) = _finish([first, second])
    finally:
        gate.close()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert (rc1, rc2) == (0, 0), err1 + err2
    assert "Applied 1 migration(s)" in out1
    assert "Got the migration lock after" in err2
    assert out2 == "No migrations to apply.\n"
    assert scratch_db.records() == [("app", "001_gated")]


def test_lock_wait_limit_gives_a_clear_error_naming_the_holder(scratch_db, tree):
    tree.table_pair("app/001_first", "first_t")
    holder = _connect(scratch_db, autocommit=True)
    holder.execute("SET application_name = 'deploy-replica-3'")
    holder.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
    try:
        proc = scratch_db.manage("sqlmigrate_up", "--dir", str(tree), "--lock-wait", "0.3")
        pid = holder.info.backend_pid
    finally:
        holder.close()
    assert proc.returncode == 1
    assert f"Waiting for the migration lock, held by pid {pid} (deploy-replica-3)" in proc.stderr
    assert (
        f"for the migration lock, held by pid {pid} (deploy-replica-3). Another runner is still migrating"
        in proc.stderr
    )
    assert f"SELECT pg_terminate_backend({pid});" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert scratch_db.tables() == set()


@pytest.mark.skipif(os.name != "posix", reason="needs kill -9")
def test_runner_killed_while_waiting_for_the_lock_changes_nothing(scratch_db, tree):
    tree.table_pair("app/001_first", "first_t")
    holder = _connect(scratch_db, autocommit=True)
    holder.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
    waiter = scratch_db.popen("sqlmigrate_up", "--dir", str(tree))
    try:
        assert waiter.stderr.readline().startswith("Waiting for the migration lock")
        waiter.send_signal(signal.SIGKILL)
        waiter.communicate(timeout=DEADLINE)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        holder.close()
    assert scratch_db.tables() == set()
    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("app", "001_first")]
