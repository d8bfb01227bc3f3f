"""Guard rails for the benchmark (issue 5): counts of queries, never timings.

* ``sqlmigrate_status`` sends the same number of queries whatever the tree's size
  (one read of the tracking table, never one query per migration as goose does).
* Applying a transactional migration is ONE query (one round trip): its body, its
  ``SET LOCAL`` settings and its record travel together; a run adds a fixed number of
  queries (lock, table read, schema check, unlock) however many migrations it applies.
"""

from __future__ import annotations

import pytest
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db(transaction=True)

# The fixed cost of a run: application_name + lock key, try-lock, read of the tracking
# table, schema check, the lint gate's one read of the catalog (a run with pending
# migrations), unlock + reset. Generous on purpose: it guards against growth with N, not
# against one more query at start-up.
RUN_OVERHEAD_MAX = 11
STATUS_MAX = 5


def _write(tree, n: int, modules=("auth", "users", "rbac")) -> None:
    for i in range(1, n + 1):
        module = modules[i % len(modules)]
        tree.pair(
            f"{module}/{i:04d}_create_t{i}",
            f"CREATE TABLE t{i} (id serial PRIMARY KEY);\n",
            f"DROP TABLE t{i};\n",
        )


def _queries(scratch_db, command: str, **options) -> list[str]:
    connection = scratch_db.connection
    connection.ensure_connection()  # connection set-up is not what is counted
    with CaptureQueriesContext(connection) as ctx:
        out, err, rc = scratch_db.run(command, **options)
    assert rc == 0, err
    return [q["sql"] for q in ctx.captured_queries]


def _status_queries(scratch_db, tree, n: int) -> list[str]:
    _write(tree, n)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), fake=True, verbosity=0)
    assert rc == 0, err
    queries = _queries(scratch_db, "sqlmigrate_status", dir=str(tree))
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), check=True)
    assert rc == 0 and f"{n} applied" in out, out + err
    return queries


def test_status_sends_the_same_queries_for_10_and_1000_migrations(scratch_db, tree, tmp_path):
    small = _status_queries(scratch_db, tree, 10)
    scratch_db.sql("DELETE FROM migrations")
    large = _status_queries(scratch_db, type(tree)(tmp_path / "large"), 1000)
    assert len(small) == len(large), (small, large)
    assert len(large) <= STATUS_MAX, large


def test_applying_a_transactional_migration_is_one_round_trip(scratch_db, tree):
    _write(tree, 4)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), to="users/0001_create_t1", verbosity=0)
    assert rc == 0, err  # the tracking table exists from here on
    one = _queries(scratch_db, "sqlmigrate_up", dir=str(tree), to="rbac/0002_create_t2", verbosity=0)
    two = _queries(scratch_db, "sqlmigrate_up", dir=str(tree), verbosity=0)
    assert scratch_db.value("SELECT count(*) FROM migrations") == 4

    # Each migration is exactly one query holding its settings, its body and its record.
    bodies = [q for q in one + two if "CREATE TABLE t" in q]
    assert len(bodies) == 3
    for q in bodies:
        assert q.startswith("BEGIN;") and "SET LOCAL lock_timeout" in q
        assert "INSERT INTO" in q and q.rstrip().endswith("COMMIT;")
    # One more migration in a run costs exactly one more query: everything else is fixed.
    assert len(two) - len(one) == 1, (one, two)
    assert len(one) - 1 <= RUN_OVERHEAD_MAX, one


def test_a_run_with_nothing_to_apply_has_the_same_fixed_cost(scratch_db, tree):
    _write(tree, 3)
    first = _queries(scratch_db, "sqlmigrate_up", dir=str(tree), verbosity=0)
    again = _queries(scratch_db, "sqlmigrate_up", dir=str(tree), verbosity=0)
    assert not any("CREATE TABLE t" in q for q in again)
    assert len(again) <= RUN_OVERHEAD_MAX, again
    assert len(first) - 3 <= RUN_OVERHEAD_MAX + 1, first  # +1: the first run creates the tracking table


def _noop_up_queries(scratch_db, tree, n: int) -> list[str]:
    _write(tree, n)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), fake=True, verbosity=0)
    assert rc == 0, err
    queries = _queries(scratch_db, "sqlmigrate_up", dir=str(tree), verbosity=0)
    assert scratch_db.value("SELECT count(*) FROM migrations") == n
    return queries


def test_an_up_with_nothing_to_do_sends_the_same_queries_for_10_and_1000_applied(scratch_db, tree, tmp_path):
    small = _noop_up_queries(scratch_db, tree, 10)
    scratch_db.sql("DELETE FROM migrations")
    large = _noop_up_queries(scratch_db, type(tree)(tmp_path / "large"), 1000)
    assert len(small) == len(large), (small, large)
    assert len(large) <= RUN_OVERHEAD_MAX, large
    assert not any("INSERT INTO" in q for q in large), large


# -- the admin: the changelist and a detail page, 10 against 1,000 records and files -----------------

CHANGELIST = "/admin/nixmig/migrationrecord/"


def _admin_queries(client, settings, tree, n: int) -> dict[str, int]:
    """Record ``n`` migrations of a fresh tree; return the queries of the changelist and of one detail page."""
    from django.db import connection

    from nixmig import api
    from nixmig.models import MigrationRecord
    from nixmig.recorder import Recorder

    _write(tree, n)
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    recorder = Recorder(connection)
    recorder.ensure_schema(recorder.read())
    loaded = api.load_tree(tree.path)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM migrations")
        cursor.execute(
            "INSERT INTO migrations (name, module, checksum, applied_at, execution_ms) "
            "SELECT u.name, u.module, u.checksum, now(), 1.0 "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(name, module, checksum)",
            [
                [m.name for m in loaded.migrations],
                [m.module for m in loaded.migrations],
                [m.checksum for m in loaded.migrations],
            ],
        )
    counts = {}
    middle = MigrationRecord.objects.order_by("id").values_list("pk", flat=True)[n // 2]
    for url in (CHANGELIST, f"{CHANGELIST}{middle}/change/"):
        client.get(url)  # not counted: Django caches content types and permissions on first use
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert response.context["nixmig"]["applied"] == n and not response.context["nixmig"].get("error")
    assert response.content.decode().count('<td class="field-checksum">ok</td>') == min(n, 100)
    counts["changelist"] = len(ctx.captured_queries)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(f"{CHANGELIST}{middle}/change/")
    assert response.status_code == 200
    assert "<h3>Up SQL <code>" in response.content.decode() and "are missing" not in response.content.decode()
    counts["detail"] = len(ctx.captured_queries)
    return counts


@pytest.mark.django_db  # the admin's test client works in the test database's transaction
def test_admin_changelist_and_detail_send_the_same_queries_for_10_and_1000_records(
    admin_client, settings, tree, tmp_path
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    small = _admin_queries(admin_client, settings, tree, 10)
    large = _admin_queries(admin_client, settings, type(tree)(tmp_path / "large"), 1000)
    assert small == large, (small, large)
