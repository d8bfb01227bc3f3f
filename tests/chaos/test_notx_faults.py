"""Statements PostgreSQL runs outside a transaction, under lock timeouts, kills and failed resumes.

Each fault is made deterministic by a blocker: a transaction held open from a second connection, so
the statement waits (CREATE INDEX CONCURRENTLY and REINDEX CONCURRENTLY for the writers of their
table, DETACH PARTITION CONCURRENTLY for the readers of the parent) exactly as long as the test says.
The runner is then killed, its backend terminated, or the lock timeout fires; the checks read the
catalog: every index of a recorded migration is valid, no ``_ccnew``/``_ccold`` index is left, no
partition is left pending detach, and the progress row keeps a statement that may have run.
"""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from nixmig import api
from nixmig.exceptions import MigrationFailed

from .runners import runner_backend

NOTX = "-- nixmig:no-transaction\n-- nixmig:lock-timeout={timeout}\n"


def _tree(tmp_path, up: str, *, timeout: str = "10s", down: str = "") -> str:
    folder = tmp_path / "migrations_sql" / "idx"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "001_change_up.sql").write_text(NOTX.format(timeout=timeout) + up)
    (folder / "001_change_down.sql").write_text(down)
    return str(tmp_path / "migrations_sql")


def _big(db) -> None:
    db.conn.execute("CREATE TABLE big (a int, b int)")
    db.conn.execute("INSERT INTO big SELECT g, g FROM generate_series(1, 5000) AS g")


def _blocker(db, sql: str):
    """A second session holding a transaction open (it holds its locks until the test commits it)."""
    conn = db.cluster.connect(db.name, application_name="blocker")
    conn.execute("BEGIN")
    conn.execute(sql)
    return conn


def _indexes(db, table: str = "big") -> list[tuple[str, bool]]:
    return db.conn.execute(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = %s::regclass ORDER BY c.relname",
        [table],
    ).fetchall()


def _progress(db) -> list[tuple[int, int]]:
    """(statements_done, hashes) of the progress rows: one hash more than done is a statement in flight."""
    if db.conn.execute("SELECT to_regclass('migrations_progress')").fetchone()[0] is None:
        return []
    return db.conn.execute(
        "SELECT statements_done, cardinality(statement_hashes) FROM migrations_progress"
    ).fetchall()


def _records(db) -> list[str]:
    if db.conn.execute("SELECT to_regclass('migrations')").fetchone()[0] is None:
        return []
    return [r[0] for r in db.conn.execute("SELECT module || '/' || name FROM migrations ORDER BY id")]


def _wait_for_lock(db, backend: int, timeout: float = 30) -> None:
    """Wait until ``backend`` waits for a lock (the blocker's transaction) inside its statement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.conn.execute(
            "SELECT wait_event_type, query FROM pg_stat_activity WHERE pid = %s", [backend]
        ).fetchone()
        if row and row[0] == "Lock" and "CONCURRENTLY" in row[1].upper():
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {backend} never waited for the blocker: {row}")


def _runner_waiting(db, tree: str, tag: str):
    """Start sqlmigrate_up in a process of its own; return it and its backend once it waits for the blocker."""
    runner = db.spawn(["sqlmigrate_up", "--dir", tree], tag)
    found = runner_backend(db.conn, runner)
    assert found is not None, runner.stderr
    _wait_for_lock(db, found[0])
    return runner, found[0]


def _kill(db, runner, backend: int | None) -> None:
    """kill -9 the runner; with ``backend``, end its backend too (what a lost client often leaves)."""
    runner.kill()
    runner.wait(30)
    if backend is not None:
        db.conn.execute("SELECT pg_terminate_backend(%s)", [backend])
        _gone(db, backend)


def _gone(db, backend: int, timeout: float = 30) -> None:
    """Wait until ``backend`` has exited (the blocker's own session stays)."""
    deadline = time.monotonic() + timeout
    while db.conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone():
        assert time.monotonic() < deadline, f"backend {backend} of the killed runner stayed"
        time.sleep(0.01)


def _status(db, tree: str) -> dict:
    import json

    rc, out, err, tb = db.inprocess("sqlmigrate_status", "--dir", tree, "--json")
    assert (rc, tb) == (0, None), err
    return json.loads(out)


# -- 1. a lock-timeout retry of CREATE INDEX CONCURRENTLY -------------------------------------------


@pytest.mark.parametrize("if_not_exists", ["IF NOT EXISTS ", ""])
def test_a_lock_timeout_retry_drops_the_invalid_index_the_first_attempt_left(
    chaos_db, tmp_path, if_not_exists
):
    db = chaos_db
    _big(db)
    tree = _tree(
        tmp_path, f"CREATE INDEX CONCURRENTLY {if_not_exists}big_a_idx ON big (a);\n", timeout="300ms"
    )
    blocker = _blocker(db, "INSERT INTO big VALUES (0, 0)")
    events = []

    def progress(event, **data):
        events.append((event, data))
        if event == "retry":  # the first attempt timed out, leaving an INVALID big_a_idx; the writer ends
            blocker.execute("COMMIT")

    try:
        with override_settings(NIXMIG={"LOCK_RETRIES": 2}):
            result = api.migrate_up(directory=tree, database=db.alias, progress=progress)
    finally:
        blocker.close()
    assert result.ids == ["idx/001_change"]
    assert _indexes(db) == [("big_a_idx", True)]
    cleaned = [d for e, d in events if e == "cleaned"]
    assert [d["what"] for d in cleaned] == ["the INVALID index public.big_a_idx"]
    assert _status(db, tree)["leftovers"] == []


def test_lock_timeouts_to_the_last_retry_keep_the_statement_in_flight_and_say_why(chaos_db, tmp_path):
    db = chaos_db
    _big(db)
    tree = _tree(tmp_path, "CREATE INDEX CONCURRENTLY big_a_idx ON big (a);\n", timeout="200ms")
    blocker = _blocker(db, "INSERT INTO big VALUES (0, 0)")
    try:
        with override_settings(NIXMIG={"LOCK_RETRIES": 1}):
            rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
        # Dropping the INVALID index waits for the same writer: it stays, and so does the in-flight mark.
        assert (rc, tb) == (1, None), err
        assert "could not take its lock within the lock timeout in 2 attempt(s)" in err
        assert "may have run in part" in err and "keeps statement 1 in flight" in err
        assert "Fix the SQL" not in err and "no statement of it ran" not in err
        assert "pg_stat_activity" in err  # what to do: find the lock holder
        assert _indexes(db) == [("big_a_idx", False)] and _progress(db) == [(0, 1)] and _records(db) == []
        assert [x["fix"] for x in _status(db, tree)["leftovers"]] == [
            'DROP INDEX CONCURRENTLY IF EXISTS "public"."big_a_idx";'
        ]
    finally:
        blocker.close()
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
    assert (rc, tb) == (0, None), err
    assert "removed the INVALID index public.big_a_idx" in err
    assert _indexes(db) == [("big_a_idx", True)] and _records(db) == ["idx/001_change"]


def test_a_failed_create_index_concurrently_leaves_nothing_and_says_what_it_removed(chaos_db, tmp_path):
    db = chaos_db
    db.conn.execute("CREATE TABLE big (a int, b int)")
    db.conn.execute("INSERT INTO big VALUES (1, 1), (1, 2)")
    tree = _tree(tmp_path, "CREATE UNIQUE INDEX CONCURRENTLY ON big (a);\n")
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
    assert (rc, tb) == (1, None), err
    assert "removed what it left in the catalog: the INVALID index public.big_a_idx" in err
    assert "nothing of it is left, and it is not recorded" in err and "Fix the SQL" in err
    assert _indexes(db) == [] and _progress(db) == []


# -- 2. an unnamed CREATE INDEX CONCURRENTLY in flight at a kill -------------------------------------


@pytest.mark.parametrize("when", ["waiting for lockers", "after it finished"])
def test_an_unnamed_create_index_concurrently_in_flight_at_a_kill_is_built_once(chaos_db, tmp_path, when):
    db = chaos_db
    _big(db)
    tree = _tree(tmp_path, "CREATE INDEX CONCURRENTLY ON big (a);\n")
    blocker = _blocker(db, "INSERT INTO big VALUES (0, 0)")
    try:
        runner, backend = _runner_waiting(db, tree, "unnamed")
        if when == "waiting for lockers":
            _kill(db, runner, backend)
            blocker.execute("COMMIT")
            assert _indexes(db) == [("big_a_idx", False)]
        else:  # the runner dies, its backend goes on and finishes the index once the writer commits
            runner.kill()
            runner.wait(30)
            blocker.execute("COMMIT")
            _gone(db, backend)
            assert _indexes(db) == [("big_a_idx", True)]
    finally:
        blocker.close()
    assert _progress(db) == [(0, 1)]  # statement 1 in flight
    assert _status(db, tree)["migrations"][0]["state"] != "pending"
    rc, preview, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree, "--sql")
    assert (rc, tb) == (0, None), err
    sends_it_again = "CREATE INDEX CONCURRENTLY ON big (a)" in preview
    assert sends_it_again is (when == "waiting for lockers"), preview
    assert ('DROP INDEX CONCURRENTLY IF EXISTS "public"."big_a_idx"' in preview) is (
        when == "waiting for lockers"
    )

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)

    assert (rc, tb) == (0, None), err
    assert _indexes(db) == [("big_a_idx", True)], "the index was built twice, or left INVALID"
    assert _records(db) == ["idx/001_change"] and _progress(db) == []
    if when == "waiting for lockers":
        assert "removed the INVALID index public.big_a_idx" in err
    else:
        assert "had finished, so it is not run again" in err


# -- 3. REINDEX CONCURRENTLY in flight ----------------------------------------------------------------


def test_reindex_concurrently_in_flight_at_a_kill_leaves_no_ccnew_index(chaos_db, tmp_path):
    db = chaos_db
    _big(db)
    db.conn.execute("CREATE INDEX big_a_idx ON big (a)")
    tree = _tree(tmp_path, "REINDEX INDEX CONCURRENTLY big_a_idx;\n")
    blocker = _blocker(db, "INSERT INTO big VALUES (0, 0)")
    try:
        runner, backend = _runner_waiting(db, tree, "reindex")
        _kill(db, runner, backend)
    finally:
        blocker.close()
    assert ("big_a_idx_ccnew", False) in _indexes(db)
    leftovers = _status(db, tree)["leftovers"]
    assert [x["fix"] for x in leftovers] == ['DROP INDEX CONCURRENTLY IF EXISTS "public"."big_a_idx_ccnew";']
    rc, preview, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree, "--sql")  # what the resume would send
    assert (rc, tb) == (0, None), err
    drop = 'DROP INDEX CONCURRENTLY IF EXISTS "public"."big_a_idx_ccnew";'
    assert drop in preview and preview.index(drop) < preview.index("REINDEX INDEX CONCURRENTLY big_a_idx")

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)

    assert (rc, tb) == (0, None), err
    assert "removed the INVALID index public.big_a_idx_ccnew" in err
    assert _indexes(db) == [("big_a_idx", True)]
    assert _records(db) == ["idx/001_change"] and _status(db, tree)["leftovers"] == []


# -- 4. DETACH PARTITION CONCURRENTLY: a failed resume keeps the in-flight marker ----------------------


def test_a_failed_resume_of_a_pending_detach_keeps_its_marker_and_the_next_finalizes(chaos_db, tmp_path):
    db = chaos_db
    db.conn.execute("CREATE TABLE ev (at date NOT NULL) PARTITION BY RANGE (at)")
    db.conn.execute("CREATE TABLE ev_2020 PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')")
    tree = _tree(tmp_path, "ALTER TABLE ev DETACH PARTITION ev_2020 CONCURRENTLY;\n", timeout="300ms")
    blocker = _blocker(db, "SELECT count(*) FROM ev")  # a reader of the parent (and of its partitions)
    try:
        runner, backend = _runner_waiting(db, tree, "detach")
        _kill(db, runner, backend)
        pending = "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'ev_2020'::regclass"
        assert db.conn.execute(pending).fetchone() == (True,)
        assert _progress(db) == [(0, 1)]
        assert [x["fix"] for x in _status(db, tree)["leftovers"]] == [
            'ALTER TABLE "public"."ev" DETACH PARTITION "public"."ev_2020" FINALIZE;'
        ]
        with override_settings(NIXMIG={"LOCK_RETRIES": 0}):
            rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)  # the reader still holds its lock
        assert (rc, tb) == (1, None), err
        assert "could not check or clean up what its interrupted attempt left" in err
        assert "keeps statement 1 in flight" in err and "Fix the SQL" not in err
        assert _progress(db) == [(0, 1)], "the failed resume erased the in-flight marker"
        assert _status(db, tree)["migrations"][0]["state"] != "pending"
    finally:
        blocker.close()

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)

    assert (rc, tb) == (0, None), err
    assert "finished the partition ev_2020 pending detach" in err
    assert db.conn.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'ev_2020'::regclass"
    ).fetchone() == (0,)
    assert _records(db) == ["idx/001_change"] and _progress(db) == []


def test_a_detach_that_times_out_and_is_finalized_counts_as_done_and_the_file_goes_on(chaos_db, tmp_path):
    """The lock timeout fires in DETACH CONCURRENTLY's wait, leaving the partition pending detach; the
    FINALIZE that clears it completes the detach, so the statement is done: the progress must not say
    it failed and left nothing (a resume would then find the partition gone under a clean row)."""
    import threading

    db = chaos_db
    db.conn.execute("CREATE TABLE ev (at date NOT NULL) PARTITION BY RANGE (at)")
    db.conn.execute("CREATE TABLE ev_2020 PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')")
    tree = _tree(
        tmp_path,
        "ALTER TABLE ev DETACH PARTITION ev_2020 CONCURRENTLY;\nCREATE TABLE after_detach (id int);\n",
        timeout="3s",
    )
    blocker = _blocker(db, "SELECT count(*) FROM ev")  # a reader of the parent: the detach waits for it
    result: list = []
    with override_settings(NIXMIG={"LOCK_RETRIES": 0}):
        runner = threading.Thread(target=lambda: result.append(db.inprocess("sqlmigrate_up", "--dir", tree)))
        runner.start()
        try:
            backend = _waiting_on(db, "CONCURRENTLY")  # the detach waits; its lock timeout fires
            _waiting_on(db, "FINALIZE", backend)  # the clean-up after the timeout waits on the same reader
        finally:
            blocker.close()  # the reader ends: the FINALIZE completes the detach
            runner.join(60)
    assert not runner.is_alive() and result, "the runner did not end"
    rc, out, err, tb = result[0]
    assert (rc, tb) == (0, None), err
    assert "finished the partition ev_2020 pending detach" in err
    assert "counts as done" in err
    assert db.conn.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'ev_2020'::regclass"
    ).fetchone() == (0,)
    assert db.conn.execute("SELECT to_regclass('after_detach') IS NOT NULL").fetchone() == (True,)
    assert _records(db) == ["idx/001_change"] and _progress(db) == []


def _waiting_on(db, text: str, backend: int | None = None, timeout: float = 30) -> int:
    """Return the backend whose query holds ``text`` once it waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s "
            "AND application_name <> 'blocker' AND (%s::int IS NULL OR pid = %s::int)",
            [f"%{text}%", backend, backend],
        ).fetchone()
        if row:
            return row[0]
        time.sleep(0.01)
    raise AssertionError(f"no backend waited for a lock in a query with {text!r}")


# -- 6. messages name the cause ----------------------------------------------------------------------


def test_a_terminated_connection_is_named_and_keeps_the_statement_in_flight(chaos_db, tmp_path):
    db = chaos_db
    _big(db)
    tree = _tree(
        tmp_path,
        "CREATE INDEX CONCURRENTLY big_a_idx ON big (a);\nCREATE INDEX CONCURRENTLY big_b_idx ON big (b);\n",
    )
    blocker = _blocker(db, "INSERT INTO big VALUES (0, 0)")
    try:
        runner, backend = _runner_waiting(db, tree, "terminate")
        db.conn.execute("SELECT pg_terminate_backend(%s)", [backend])
        assert runner.wait(60) == 1
    finally:
        blocker.close()
    err = runner.stderr
    assert "Traceback" not in err
    assert "statement 1 of 2" in err and "the statement may have run" in err
    assert "terminated the connection" in err or "connection was lost" in err
    assert "keeps statement 1 in flight" in err
    assert "Fix the SQL" not in err and "no statement of it ran" not in err
    assert _progress(db) == [(0, 1)]
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
    assert (rc, tb) == (0, None), err
    assert _indexes(db) == [("big_a_idx", True), ("big_b_idx", True)]


def test_a_lock_timeout_in_a_transactional_file_names_the_lock_not_the_sql(chaos_db, tmp_path):
    db = chaos_db
    _big(db)
    folder = tmp_path / "migrations_sql" / "t"
    folder.mkdir(parents=True)
    (folder / "001_alter_up.sql").write_text(
        "-- nixmig:lock-timeout=100ms\nALTER TABLE big ADD COLUMN c int;\n"
    )
    (folder / "001_alter_down.sql").write_text("")
    blocker = _blocker(db, "SELECT count(*) FROM big")
    try:
        with override_settings(NIXMIG={"LOCK_RETRIES": 0}), pytest.raises(MigrationFailed) as info:
            api.migrate_up(directory=tmp_path / "migrations_sql", database=db.alias)
    finally:
        blocker.close()
    message = str(info.value)
    assert "lock timeout" in message and "Fix the SQL" not in message
    assert "when the session holding the lock is done" in message
