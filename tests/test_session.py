"""The session API: several up / down steps under one lock and one read of the tracking table.

After every step the session's own status must equal what a fresh read of the database
gives; that comparison (``_agrees``) is the core of these tests.
"""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from nixmig import api, lint
from nixmig.exceptions import MigrationFailed, NixmigError, PlanError
from nixmig.plan import plan_down, plan_up

pytestmark = pytest.mark.django_db(transaction=True)


def _write(tree, n: int) -> None:
    for i in range(1, n + 1):
        module = ("auth", "users")[i % 2]
        tree.pair(f"{module}/{i:03d}_t{i}", f"CREATE TABLE t{i} (id int);\n", f"DROP TABLE IF EXISTS t{i};\n")


def _ids(tree) -> list[str]:
    return [m.id for m in api.load_tree(str(tree)).migrations]


def _view(status) -> list[tuple]:
    return [
        (e.id, e.state, e.out_of_order, e.record.row_id if e.record else None, e.progress is not None)
        for e in status.entries
    ]


def _agrees(s, scratch_db) -> None:
    """The session's status is the database's: states, out-of-order flags, row ids, progress."""
    fresh = api.status(tree=s.tree, database=scratch_db.alias, create_table=False)
    mine = s.status()
    assert _view(mine) == _view(fresh)
    # (status also lists what a run would refuse in pending files: the session plans, it does not lint)
    assert [p.message for p in mine.problems] == [p.message for p in fresh.problems if p.code != "refused"]


def _advisory_locks(scratch_db) -> int:
    return scratch_db.value(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


def _other_runner(scratch_db, tree) -> str:
    """Open a session in another thread (so on another connection); return its error."""
    errors = []

    def run():
        try:
            with api.session(scratch_db.alias, directory=str(tree), lock_wait=0):
                pass
        except NixmigError as exc:
            errors.append(str(exc))
        finally:
            connections[scratch_db.alias].close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return "".join(errors).lower()


def _round_trips(s, ids: list[str], k: int) -> None:
    for mid in ids[:k]:
        s.up(to=mid)
        s.down(steps=1)
        s.up(to=mid)


def _session_queries(scratch_db, tree, k: int) -> list[str]:
    connection = scratch_db.connection
    connection.ensure_connection()
    loaded = api.load_tree(str(tree))
    ids = [m.id for m in loaded.migrations]
    # (the linter's catalog queries depend on what each plan touches: counted apart, not here)
    with (
        lint.skipped(),
        CaptureQueriesContext(connection) as ctx,
        api.session(scratch_db.alias, tree=loaded) as s,
    ):
        _round_trips(s, ids, k)
        s.down(steps=k)
    assert scratch_db.value("SELECT count(*) FROM migrations") == 0
    return [q["sql"] for q in ctx.captured_queries]


def _count(queries: list[str], text: str) -> int:
    return sum(1 for q in queries if text in q)


def test_k_steps_take_the_lock_once_and_read_the_tracking_table_once(scratch_db, tree, tmp_path):
    _write(tree, 12)
    few = _session_queries(scratch_db, tree, 4)  # 13 steps
    scratch_db.sql("DROP TABLE migrations")
    many = _session_queries(scratch_db, tree, 12)  # 37 steps
    for queries in (few, many):
        assert _count(queries, "pg_try_advisory_lock") == 1, queries
        assert _count(queries, "pg_advisory_unlock") == 1, queries
        assert _count(queries, "to_regclass(") == 1, queries  # the one whole read of the tracking table
    # Each round trip costs a fixed number of queries: 3 migrations and one fetch of the new rows' ids
    # (and the final rollback one query per migration it rolls back).
    assert len(many) - len(few) == 8 * 4 + 8, (few, many)
    assert _count(many, "WHERE id >") == 12 + 1  # one per rollback of a just-applied migration
    # and not the size of the tree: the same steps on a tree 5x larger send the same queries.
    big = type(tree)(tmp_path / "big")
    _write(big, 60)
    scratch_db.sql("DROP TABLE migrations; " + "; ".join(f"DROP TABLE IF EXISTS t{i}" for i in range(1, 61)))
    assert len(_session_queries(scratch_db, big, 4)) == len(few)


def test_the_one_call_functions_each_take_the_lock_and_read_the_table(scratch_db, tree):
    """The contrast the session removes: k one-call steps lock and read k times."""
    _write(tree, 4)
    loaded = api.load_tree(str(tree))
    scratch_db.connection.ensure_connection()
    with CaptureQueriesContext(scratch_db.connection) as ctx:
        for m in loaded.migrations:
            api.migrate_up(database=scratch_db.alias, tree=loaded, to=m.id)
    queries = [q["sql"] for q in ctx.captured_queries]
    assert _count(queries, "pg_try_advisory_lock") == 4
    assert _count(queries, "to_regclass(") == 4


def test_up_down_and_status_in_one_session(scratch_db, tree):
    _write(tree, 3)
    first, second, third = _ids(tree)
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        assert s.status().counts()["pending"] == 3
        result = s.up(to=second)
        assert result.ids == [first, second] and result.direction == "up"
        _agrees(s, scratch_db)
        assert [e.state for e in s.status().entries] == ["applied", "applied", "pending"]
        result = s.down(steps=1)
        assert result.ids == [second] and result.skipped == 1
        _agrees(s, scratch_db)
        assert s.up().ids == [second, third]
        _agrees(s, scratch_db)
        assert s.up().ids == []  # nothing left: no query sent for the plan
        assert s.down(to=first).ids == [third, second]
        _agrees(s, scratch_db)
        assert s.up(fake=True).ids == [second, third]
        _agrees(s, scratch_db)
        assert scratch_db.tables() == {"migrations", "t1"}  # faked: recorded, not run
        assert s.down(everything=True, fake=True).ids == [third, second, first]
        _agrees(s, scratch_db)
    assert scratch_db.value("SELECT count(*) FROM migrations") == 0


def test_random_sequences_keep_the_session_equal_to_the_database(scratch_db, tree):
    """Random steps: each plans what plan_up / plan_down plan on a fresh read, and leaves the same state."""
    _write(tree, 10)
    ids = _ids(tree)
    rng = random.Random(20)
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        for _ in range(30):
            fresh = api.status(tree=s.tree, database=scratch_db.alias, create_table=False)
            applied = sum(1 for e in fresh.entries if e.record is not None)
            if applied and rng.random() < 0.45:
                steps = rng.randint(1, applied)
                expected, result = plan_down(fresh, steps=steps), s.down(steps=steps)
            else:
                to = rng.choice(ids)
                if rng.random() < 0.2:
                    to = to.split("/")[1]  # a bare name: found as the one-call functions find it
                expected, result = plan_up(fresh, to=to), s.up(to=to, fake=rng.random() < 0.3)
            assert [e.id for e in result.planned] == [e.id for e in expected]
            assert result.skipped == (
                applied - len(expected) if result.direction == "down" else len(fresh.with_state("applied"))
            )
            _agrees(s, scratch_db)


def test_out_of_order_flags_follow_the_steps(scratch_db, tree):
    _write(tree, 3)
    first, second, third = _ids(tree)
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up(to=first)
    # A third migration recorded by another runner (e.g. a merged branch applied elsewhere).
    scratch_db.sql("INSERT INTO migrations (name, module) VALUES ('003_t3', 'users')")
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        assert [e.id for e in s.status().out_of_order] == [second]
        with pytest.raises(PlanError, match="out of order"):
            s.up()
        _agrees(s, scratch_db)
        assert s.up(allow_out_of_order=True).ids == [second]
        assert s.status().out_of_order == []
        _agrees(s, scratch_db)
        assert s.down(steps=1).ids == [second]  # the most recently applied, not the highest number
        assert [e.id for e in s.status().out_of_order] == [second]
        _agrees(s, scratch_db)
        assert s.down(steps=1).ids == [third]
        assert s.status().out_of_order == []
        _agrees(s, scratch_db)


def test_a_failing_up_mid_sequence_leaves_the_session_as_the_database_is(scratch_db, tree):
    _write(tree, 2)
    tree.pair("auth/003_bad", "CREATE TABLE t3 (id int);\nSELECT 1 / 0;\n", "DROP TABLE t3;\n")
    tree.pair("users/004_t4", "CREATE TABLE t4 (id int);\n", "DROP TABLE t4;\n")
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up(to="users/001_t1")
        with pytest.raises(MigrationFailed, match="division by zero") as failed:
            s.up()
        assert failed.value.migration_id == "auth/003_bad"
        _agrees(s, scratch_db)
        assert [e.state for e in s.status().entries] == ["applied", "applied", "pending", "pending"]
        assert s.down(steps=2).ids == ["auth/002_t2", "users/001_t1"]  # the session goes on
        _agrees(s, scratch_db)
    assert scratch_db.tables() == {"migrations"}


def test_a_failing_down_mid_sequence_keeps_the_migration_applied(scratch_db, tree):
    _write(tree, 1)
    tree.pair("auth/002_x", "CREATE TABLE x (id int);\n", "DROP TABLE no_such_table;\n")
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up()
        with pytest.raises(MigrationFailed, match="no_such_table"):
            s.down()
        _agrees(s, scratch_db)
        assert s.status().counts()["applied"] == 2
        assert s.down(steps=1, fake=True).ids == ["auth/002_x"]
        _agrees(s, scratch_db)


def test_a_no_transaction_file_stopped_part_way_is_partly_applied_in_the_session(scratch_db, tree):
    _write(tree, 1)
    tree.pair(
        "auth/002_idx",
        "-- nixmig:no-transaction\nCREATE INDEX CONCURRENTLY t1_id ON t1 (id);\nSELECT 1 / 0;\n",
        "-- nixmig:no-transaction\nDROP INDEX CONCURRENTLY t1_id;\n",
    )
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        with pytest.raises(MigrationFailed):
            s.up()
        assert s.status().counts()["partly_applied"] == 1
        _agrees(s, scratch_db)
        with pytest.raises(PlanError, match="partly applied"):
            s.down()


def test_the_lock_is_held_for_the_session_and_released_on_exit(scratch_db, tree):
    _write(tree, 2)
    scratch_db.connection.ensure_connection()
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        assert _advisory_locks(scratch_db) == 1
        s.up()
        s.down()
        assert _advisory_locks(scratch_db) == 1
        assert "gave up" in _other_runner(scratch_db, tree)  # another runner does not get in
    assert _advisory_locks(scratch_db) == 0
    with pytest.raises(NixmigError, match="not open|closed"):
        s.up()


def test_the_lock_is_released_when_the_block_raises(scratch_db, tree):
    _write(tree, 1)
    tree.pair("auth/002_bad", "SELECT 1 / 0;\n", "")
    with pytest.raises(RuntimeError, match="caller"), api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up(to="users/001_t1")
        raise RuntimeError("the caller's own error")
    assert _advisory_locks(scratch_db) == 0
    with pytest.raises(MigrationFailed), api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up()
    assert _advisory_locks(scratch_db) == 0
    assert scratch_db.records() == [("users", "001_t1")]


def test_a_session_whose_connection_was_closed_refuses_more_steps(scratch_db, tree):
    _write(tree, 2)
    with api.session(scratch_db.alias, directory=str(tree)) as s:
        s.up(to="users/001_t1")
        scratch_db.connection.close()  # the lock went with it: running on would be unsafe
        with pytest.raises(NixmigError, match="can't run more steps"):
            s.up()
    assert scratch_db.records() == [("users", "001_t1")]
