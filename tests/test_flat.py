"""What the work that keeps status, a no-op up and the admin flat at 10,000 migrations must not change.

The speed itself is measured by ``bench/run.py --quick``; these tests pin the behaviour: the same
records, states and checksums as before, and every edit seen.
"""

from __future__ import annotations

import pytest
from django.test.utils import override_settings

from nixmig.recorder import Recorder

pytestmark = pytest.mark.django_db(transaction=True)


def _django_applied_at(scratch_db) -> list:
    """applied_at as Django's own timestamptz loader returns it (the reference)."""
    with scratch_db.connection.cursor() as cursor:
        cursor.execute("SELECT applied_at FROM migrations ORDER BY id")
        return [r[0] for r in cursor.fetchall()]


@pytest.mark.parametrize(
    "tz_settings",
    [{}, {"USE_TZ": False, "TIME_ZONE": "Europe/Paris"}, {"USE_TZ": True, "TIME_ZONE": "America/New_York"}],
)
def test_the_tracking_table_reads_applied_at_as_djangos_cursor_does(scratch_db, tree, tz_settings):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("auth/002_teams", "teams")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    # microseconds, a summer and a winter date, and a date before 1970
    scratch_db.sql(
        "UPDATE migrations SET applied_at = CASE name WHEN '001_users' THEN "
        "timestamptz '2026-07-01 12:34:56.789012+00' ELSE timestamptz '1969-12-31 23:59:59.000001+00' END"
    )
    with override_settings(**tz_settings):
        scratch_db.connection.close()
        records = Recorder(scratch_db.connection).read().records
        expected = _django_applied_at(scratch_db)
    scratch_db.connection.close()
    got = [r.applied_at for r in records]
    assert got == expected
    assert [g.tzinfo is None for g in got] == [e.tzinfo is None for e in expected]
    assert [str(g) for g in got] == [str(e) for e in expected]


CHANGELIST = "/admin/nixmig/migrationrecord/"


@pytest.fixture
def staff_without_view(client, settings, tree):
    """A logged-in staff user without the view permission, and a tree with a big pending file."""
    from django.contrib.auth.models import User

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.table_pair("auth/001_users", "users")
    tree.write("auth/002_rows_up.sql", "INSERT INTO users VALUES (1);\n" * 20000)
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    return client


def test_a_staff_user_without_view_permission_gets_403_before_anything_is_read(
    staff_without_view, monkeypatch
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from nixmig import api, lint, tree

    touched = []
    for module, name in (
        (tree, "read_sql_file"),
        (tree, "load_migration"),
        (api, "load_tree"),
        (api, "status"),
    ):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _name=name, _real=real, **k: touched.append(_name) or _real(*a, **k)
        )
    monkeypatch.setattr(lint, "pending_summary", lambda *a, **k: touched.append("lint") or {})
    with CaptureQueriesContext(connection) as queries:
        assert staff_without_view.get(CHANGELIST).status_code == 403
        assert staff_without_view.get(f"{CHANGELIST}1/change/").status_code == 403
    assert touched == []
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert "migrations" not in sql and "pg_attribute" not in sql, sql
    assert len(queries.captured_queries) == 8, sql  # per request: the session, the user, its permissions


def test_status_lines_of_applied_migrations_read_as_before(scratch_db, tree):
    long_name = "002_" + "a_rather_long_migration_name_" * 2
    tree.table_pair("auth/001_users", "users")
    tree.table_pair(f"auth/{long_name}", "teams")
    tree.pair("auth/003_irreversible", "CREATE TABLE x (id int);\n", None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    stamps = [r.applied_at for r in Recorder(scratch_db.connection).read().records]
    expected = [
        f"{' [X] ' + name:<52} " + ", ".join([*extra, f"applied {at:%Y-%m-%d %H:%M:%S}"])
        for name, extra, at in zip(
            ["001_users", long_name, "003_irreversible"], [[], [], ["irreversible"]], stamps, strict=True
        )
    ]
    assert out.splitlines()[1:4] == expected


def test_status_parses_and_lints_no_more_pending_sql_than_its_budget(scratch_db, tree, monkeypatch):
    from nixmig import api, lint, sqltext

    tree.table_pair("auth/001_users", "users")
    tree.pair(
        "auth/002_index", "CREATE INDEX CONCURRENTLY users_id ON users (id);\n", ""
    )  # refused in a transaction
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert "CREATE INDEX CONCURRENTLY can't run inside a transaction" in out + err  # within the budget
    parsed = []
    monkeypatch.setattr(sqltext, "analyze", lambda text: parsed.append(text) or None)
    monkeypatch.setattr(lint, "lint_entries", lambda *a, **k: parsed.append("lint"))
    monkeypatch.setattr(api, "STATUS_PARSE_BYTES", 100)  # the two pending migrations' files are bigger
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert rc == 0 and parsed == []
    assert "info: The files of the pending migrations hold 0.0 MB of SQL, more than status parses" in out
    assert "sqlmigrate_up checks every file before it runs anything" in out
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    assert parsed == [] and '"skipped": true' in out and '"not_checked"' in out


def test_the_admin_parses_and_lints_no_more_pending_sql_than_status_does(
    admin_client, settings, tree, monkeypatch
):
    from nixmig import api, lint, sqltext

    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.pair("auth/001_index", "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n", "")
    parsed = []
    monkeypatch.setattr(sqltext, "analyze", lambda text: parsed.append(text) or None)
    monkeypatch.setattr(lint, "lint_entries", lambda *a, **k: parsed.append("lint"))
    monkeypatch.setattr(api, "STATUS_PARSE_BYTES", 10)
    html = admin_client.get(CHANGELIST).content.decode()
    assert parsed == []
    assert '<li class="info" id="nixmig-lint">The files of the pending migrations hold' in html
    assert "<code>auth/001_index</code>" in html


def test_the_admin_reuses_its_summary_only_while_the_tree_and_the_table_are_unchanged(
    admin_client, settings, tree, monkeypatch
):
    import time

    from nixmig import api
    from nixmig import tree as tree_module

    monkeypatch.setattr(tree_module, "RACY_NS", 50_000_000)  # files older than 50 ms are settled
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("auth/002_teams", "teams")
    for _ in range(2):  # the first read makes the cache's folder, which changes the tree's folder
        time.sleep(0.06)
        api.load_tree()  # then the second read leaves a snapshot
    computed = []
    real_status = api.status
    monkeypatch.setattr(api, "status", lambda **k: computed.append(1) or real_status(**k))

    def summary() -> str:
        html = admin_client.get(CHANGELIST).content.decode()
        return " ".join(m for m in ("2 SQL", "1 SQL", "Up to date", "were changed after") if m in html)

    _run_default("sqlmigrate_up", dir=str(tree.path), to="auth/001_users")
    assert summary() == "1 SQL" and len(computed) == 1
    assert summary() == "1 SQL" and len(computed) == 1  # reused: nothing changed
    _run_default("sqlmigrate_up", dir=str(tree.path))
    assert summary() == "Up to date" and len(computed) == 2  # a new row
    assert summary() == "Up to date" and len(computed) == 2
    time.sleep(0.06)
    (tree.path / "auth/001_users_up.sql").write_text("CREATE TABLE userz (id serial PRIMARY KEY);\n")
    assert summary() == "Up to date were changed after" and len(computed) == 3  # an edited file


def _run_default(command: str, **options) -> None:
    from io import StringIO

    from django.core.management import call_command

    call_command(command, stdout=StringIO(), stderr=StringIO(), verbosity=0, **options)
