"""Deterministic replays of what the random trials found, each a state built by hand.

1. A runner killed after a statement that can't run in a transaction finished, but before its
   progress was written. The engine can't write progress atomically with ``CREATE/DROP INDEX
   CONCURRENTLY``, so the invariant tolerates that statement's effect being there (or gone) one
   statement ahead of the progress row. The resume must cope: re-running ``DROP INDEX
   CONCURRENTLY`` of an index that is already gone, or ``CREATE INDEX CONCURRENTLY`` of one that
   already exists (valid), must not wedge the migration. A real failure leaves the progress row,
   then the catalog is moved one statement ahead, and the row is either left as the failure wrote
   it or marked "in flight" as a killed runner leaves it; then the documented recovery runs. (Up,
   the invariant allows the statement ahead only while it is in flight: the other row is a state
   the engine never leaves itself, but a hand-made index or an older runner can.)
2. The runner's connection lost at an instant of the terminate trials: inside a file, just before
   a no-transaction file, while polling for the lock. Each must end in one error paragraph, exit 1,
   no traceback, and a state the invariant allows.
"""

from __future__ import annotations

import hashlib

import pytest

from .model import base_tree, check, final_problems, write_tree

# How the engine marks a statement that can't run in a transaction as sent but not confirmed
# ("in flight"): its progress row holds one statement hash more than statements_done.
STATES = ["failed", "in flight"]


def _setup(db, tmp_path):
    specs = base_tree(pad=0, rows=1000)
    root = write_tree(specs, tmp_path / "migrations_sql")
    return specs, root


def _progress(db, mid):
    return [p for p in db.snap().progress if p["id"] == mid]


def _mark_in_flight(db, module, name, direction, statement, first_statement):
    """Turn the failed run's progress row into the row a kill leaves: statement k+1 sent, not confirmed."""
    digest = lambda text: hashlib.sha256(text.strip().encode()).hexdigest()  # noqa: E731
    first = db.conn.execute(
        "SELECT statement_hashes[1] FROM migrations_progress WHERE module = %s AND name = %s", [module, name]
    ).fetchone()[0]
    if first != digest(first_statement):
        pytest.skip("the engine no longer hashes statements as sha256 of the stripped text; update this test")
    db.conn.execute(
        "UPDATE migrations_progress SET statement_hashes = statement_hashes || %s::text, error = NULL "
        "WHERE module = %s AND name = %s AND direction = %s",
        [digest(statement), module, name, direction],
    )


@pytest.mark.parametrize("state", STATES)
def test_down_resumes_when_the_drop_index_concurrently_ahead_of_its_progress_already_ran(
    chaos_db, tmp_path, state
):
    db = chaos_db
    specs, root = _setup(db, tmp_path)
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (0, None), err
    down_file = root / "search" / "009_cic_both_ways_down.sql"
    good = down_file.read_text()
    down_file.write_text(
        good.replace("DROP INDEX CONCURRENTLY i_09_2", "DROP INDEX CONCURRENTLY i_09_2_nope")
    )
    rc, out, err, tb = db.inprocess("sqlmigrate_down", "--steps", "3", "--dir", str(root))
    assert (rc, tb) == (1, None), err
    assert [(p["direction"], p["done"]) for p in _progress(db, "search/009_cic_both_ways")] == [("down", 2)]
    # What a kill -9 leaves when statement 3 (DROP INDEX CONCURRENTLY i_09_2) finished but its progress was
    # never written: the index is gone, the progress row still says 2.
    db.conn.execute("DROP INDEX CONCURRENTLY i_09_2")
    down_file.write_text(good)
    if state == "in flight":
        _mark_in_flight(
            db,
            "search",
            "009_cic_both_ways",
            "down",
            "DROP INDEX CONCURRENTLY i_09_2",
            "DROP INDEX CONCURRENTLY i_09_3",
        )
    assert check(specs, db.snap()) == []  # a state the invariant allows

    rc, out, err, tb = db.inprocess("sqlmigrate_down", "--steps", "1", "--dir", str(root))

    assert (rc, tb) == (0, None), f"sqlmigrate_down could not finish the rollback:\n{err}"
    snap = db.snap()
    assert "search/009_cic_both_ways" not in snap.records and not snap.progress
    assert check(specs, snap) == []
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (0, None), err
    assert final_problems(specs, db.snap()) == []


@pytest.mark.parametrize("state", STATES)
def test_up_resumes_when_the_create_index_concurrently_ahead_of_its_progress_already_ran(
    chaos_db, tmp_path, state
):
    db = chaos_db
    specs, root = _setup(db, tmp_path)
    up_file = root / "teams" / "006_cic_up.sql"
    good = up_file.read_text()
    up_file.write_text(good.replace("ON t_06_1 (w)", "ON t_06_1 (nope)"))
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (1, None), err
    assert [(p["direction"], p["done"]) for p in _progress(db, "teams/006_cic")] == [("up", 3)]
    # What a kill -9 leaves when statement 4 (CREATE INDEX CONCURRENTLY i_06_4) finished but its progress was
    # never written: a valid index, the progress row still says 3.
    db.conn.execute("CREATE INDEX CONCURRENTLY i_06_4 ON t_06_1 (w)")
    up_file.write_text(good)
    if state == "in flight":
        _mark_in_flight(
            db,
            "teams",
            "006_cic",
            "up",
            "CREATE INDEX CONCURRENTLY i_06_4 ON t_06_1 (w)",
            "CREATE TABLE t_06_1 AS SELECT g AS id, g % 97 AS v, md5(g::text) AS w "
            "FROM generate_series(1, 1000) AS g",
        )
    # In flight, a state the engine itself can leave. Under the failure's settled row, one it never
    # leaves (a hand-made index, or a runner from before the in-flight marks): the resume copes anyway.
    problems = check(specs, db.snap())
    if state == "in flight":
        assert problems == []
    else:
        assert problems == [
            "teams/006_cic (not recorded, up progress 3/4): present but should not be: index:i_06_4"
        ]

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))

    assert (rc, tb) == (0, None), f"sqlmigrate_up could not finish the migration:\n{err}"
    assert final_problems(specs, db.snap()) == []


SUICIDE = "SELECT pg_terminate_backend(pg_backend_pid())"


def test_connection_lost_inside_a_no_transaction_file_is_one_error_paragraph(chaos_db, tmp_path):
    """The runner's own backend ends between statements 1 and 3 (what pg_terminate_backend does at that instant)."""
    db = chaos_db
    specs, root = _setup(db, tmp_path)
    up_file = root / "audit" / "008_nt_multi_up.sql"
    good = up_file.read_text()
    up_file.write_text(good.replace("SELECT pg_sleep(0.000)", SUICIDE, 1))

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))

    assert tb is None, f"a lost connection ended in a traceback:\n{tb}"
    assert rc == 1 and err.count("CommandError:") == 1 and "audit/008_nt_multi" in err, err
    assert db.backends_gone()
    assert check(specs, db.snap()) == []
    up_file.write_text(good)
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (0, None), err
    assert final_problems(specs, db.snap()) == []


def test_connection_lost_inside_a_transactional_file_is_one_error_paragraph(chaos_db, tmp_path):
    db = chaos_db
    specs, root = _setup(db, tmp_path)
    up_file = root / "teams" / "005_tx_up.sql"
    good = up_file.read_text()
    up_file.write_text(good.replace("SELECT pg_sleep(0.000)", SUICIDE, 1))

    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))

    assert tb is None, f"a lost connection ended in a traceback:\n{tb}"
    assert rc == 1 and err.count("CommandError:") == 1 and "teams/005_tx" in err, err
    assert db.backends_gone()
    assert check(specs, db.snap()) == []
    up_file.write_text(good)
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (0, None), err
    assert final_problems(specs, db.snap()) == []


def test_connection_lost_just_before_a_no_transaction_file_is_one_error_paragraph(chaos_db, tmp_path):
    """pg_terminate_backend lands after the plan, before the first (no-transaction) migration starts."""
    from django.db import connections

    from nixmig import signals

    db = chaos_db
    specs, root = _setup(db, tmp_path)
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root), "--to", "core/001_base")
    assert (rc, tb) == (0, None), err

    def terminate(sender, database, **kwargs):
        with connections[database].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        db.conn.execute("SELECT pg_terminate_backend(%s)", [pid])

    signals.pre_sqlmigrate.connect(terminate)
    try:
        rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    finally:
        signals.pre_sqlmigrate.disconnect(terminate)

    assert tb is None, f"a lost connection ended in a traceback:\n{tb}"
    assert rc == 1 and err.count("CommandError:") == 1, err
    assert db.backends_gone()
    assert check(specs, db.snap()) == []
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
    assert (rc, tb) == (0, None), err
    assert final_problems(specs, db.snap()) == []


def test_connection_lost_while_waiting_for_the_lock_is_one_error_paragraph(chaos_db, tmp_path):
    """pg_terminate_backend of a runner that polls for the migration lock another session holds."""
    import time

    from .runners import runner_backend

    db = chaos_db
    specs, root = _setup(db, tmp_path)
    key = db.conn.execute(
        "SELECT hashtextextended('nixmig:migrations:' || current_database(), 0)"
    ).fetchone()[0]
    assert db.conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
    try:
        runner = db.spawn(["sqlmigrate_up", "--dir", str(root), "--lock-wait", "60"], "lock-wait")
        backend, _ = runner_backend(db.conn, runner)
        deadline = time.monotonic() + 30
        while "Waiting for the migration lock" not in runner.stderr and time.monotonic() < deadline:
            time.sleep(0.02)
        db.conn.execute("SELECT pg_terminate_backend(%s)", [backend])
        rc = runner.wait(60)
    finally:
        db.conn.execute("SELECT pg_advisory_unlock(%s)", [key])
    assert "Traceback" not in runner.stderr, runner.stderr
    assert rc == 1 and runner.stderr.count("CommandError:") == 1, runner.stderr
    assert db.snap().records == {} and check(specs, db.snap()) == []
