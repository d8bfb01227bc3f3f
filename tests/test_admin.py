"""The tracking table in the admin, through Django's test client on the default test database.

Rows are written by the Recorder (the one object that owns the table) inside the test's
transaction, so every test starts from no table at all and leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection

from nixmig import api
from nixmig.recorder import Recorder

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/nixmig/migrationrecord/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hash test users' passwords cheaply: the default hasher costs half a second per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def sql_tree(tree, settings):
    """Four migrations on disk; NIXMIG['MIGRATIONS_DIR'] points at them."""
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.table_pair("auth/001_create_users", "users")
    tree.pair(
        "orgs/002_create_orgs",
        "-- the orgs\nCREATE TABLE orgs (id serial PRIMARY KEY, name text DEFAULT 'x');\n",
        "DROP TABLE orgs;\n",
    )
    tree.table_pair("auth/003_create_tokens", "tokens")
    tree.pair("billing/004_create_invoices", "CREATE TABLE invoices (id serial PRIMARY KEY);\n", None)
    return tree


def record(*ids: str, tree_dir, when: dict[str, dt.datetime] | None = None) -> None:
    """Record ``ids`` as applied, creating the tracking table, as a run would (without running the SQL)."""
    loaded = api.load_tree(tree_dir)
    recorder = Recorder(connection)
    recorder.ensure_schema(recorder.read())
    for mid in ids:
        recorder.record_applied(loaded.get(mid))
    for mid, at in (when or {}).items():
        module, name = mid.split("/")
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE migrations SET applied_at = %s WHERE module = %s AND name = %s", [at, module, name]
            )


def rows(html: str) -> list[str]:
    """Return the migration ids of the changelist's rows, top to bottom."""
    return re.findall(r'<th class="field-migration_id"><a href="[^"]+">([^<]+)</a>', html)


def pending(html: str) -> list[str]:
    block = re.search(r'<ol id="nixmig-pending">(.*?)</ol>', html, re.S)
    return re.findall(r"<code>([^<]+)</code>", block.group(1)) if block else []


def at(day: int, month: int = 1) -> dt.datetime:
    return dt.datetime(2025, month, day, 12, 0, tzinfo=dt.UTC)


def test_changelist_shows_id_module_applied_time_execution_time_and_checksum_state(admin_client, sql_tree):
    record("auth/001_create_users", "orgs/002_create_orgs", tree_dir=sql_tree.path)
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    headers = re.findall(r'<th scope="col" class="(?:sortable )?column-([a-z_]+)', html)
    assert headers == ["migration_id", "module", "applied_at", "execution_time", "checksum", "verify_result"]
    assert html.count('<td class="field-verify_result">-</td>') == 2  # sqlmigrate_verify never ran here
    assert rows(html) == ["orgs/002_create_orgs", "auth/001_create_users"]
    assert html.count('<td class="field-checksum">ok</td>') == 2
    assert re.search(r'<td class="field-execution_time">[0-9]+ ms</td>', html)


def test_changelist_is_newest_first(admin_client, sql_tree):
    record(
        "auth/001_create_users",
        "orgs/002_create_orgs",
        "auth/003_create_tokens",
        tree_dir=sql_tree.path,
        when={"auth/001_create_users": at(3), "orgs/002_create_orgs": at(1), "auth/003_create_tokens": at(2)},
    )
    html = admin_client.get(CHANGELIST).content.decode()
    assert rows(html) == ["auth/001_create_users", "auth/003_create_tokens", "orgs/002_create_orgs"]


def test_changelist_filters_by_module(admin_client, sql_tree):
    record("auth/001_create_users", "orgs/002_create_orgs", "auth/003_create_tokens", tree_dir=sql_tree.path)
    html = admin_client.get(CHANGELIST, {"module": "auth"}).content.decode()
    assert rows(html) == ["auth/003_create_tokens", "auth/001_create_users"]
    assert 'href="?module=orgs"' in html  # the filter offers every module


def test_changelist_searches_by_name(admin_client, sql_tree):
    record("auth/001_create_users", "orgs/002_create_orgs", "auth/003_create_tokens", tree_dir=sql_tree.path)
    html = admin_client.get(CHANGELIST, {"q": "tokens"}).content.decode()
    assert rows(html) == ["auth/003_create_tokens"]


def test_changelist_drills_down_by_applied_date(admin_client, sql_tree):
    record(
        "auth/001_create_users",
        "orgs/002_create_orgs",
        tree_dir=sql_tree.path,
        when={"auth/001_create_users": at(15, 1), "orgs/002_create_orgs": at(2, 3)},
    )
    html = admin_client.get(CHANGELIST, {"applied_at__year": "2025"}).content.decode()
    links = re.search(r'<nav class="toplinks">(.*?)</nav>', html, re.S).group(1)
    assert re.findall(r">([A-Z][a-z]+ 2025)</a>", links) == ["January 2025", "March 2025"]
    html = admin_client.get(
        CHANGELIST, {"applied_at__year": "2025", "applied_at__month": "3"}
    ).content.decode()
    assert rows(html) == ["orgs/002_create_orgs"]


def test_changelist_lists_pending_ids_in_run_order_with_the_command_to_run(admin_client, sql_tree):
    record("auth/001_create_users", tree_dir=sql_tree.path)
    html = admin_client.get(CHANGELIST).content.decode()
    assert pending(html) == ["orgs/002_create_orgs", "auth/003_create_tokens", "billing/004_create_invoices"]
    assert "3 SQL\n        migration(s) on disk are PENDING" in html
    assert "<code>python manage.py sqlmigrate_up</code>" in html


def test_changelist_says_up_to_date_when_nothing_is_pending(admin_client, sql_tree):
    record(
        "auth/001_create_users",
        "orgs/002_create_orgs",
        "auth/003_create_tokens",
        "billing/004_create_invoices",
        tree_dir=sql_tree.path,
    )
    html = admin_client.get(CHANGELIST).content.decode()
    assert pending(html) == []
    assert 'id="nixmig-up-to-date">Up to date: nothing on disk is pending\n        (4 applied).' in html


def test_changelist_shows_status_problems_and_changed_files(admin_client, sql_tree):
    record("auth/001_create_users", "orgs/002_create_orgs", tree_dir=sql_tree.path)
    sql_tree.write("auth/001_create_users_up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY);\n")
    sql_tree.write("auth/009_stray_down.sql", "SELECT 1;\n")
    html = admin_client.get(CHANGELIST).content.decode()
    assert '<td class="field-checksum">changed</td>' in html
    assert "1 applied file(s) were changed after they were applied" in html
    problems = re.search(r'<ul class="messagelist" id="nixmig-problems">(.*?)</ul>', html, re.S).group(1)
    assert "warning: auth/009_stray_down.sql: matches no up file" in problems
    assert (
        "billing/004_create_invoices is irreversible" in html
    )  # info notes, as sqlmigrate_status shows them


def test_changelist_shows_a_reindex_leftover_on_a_table_of_the_tree_with_its_fix(admin_client, sql_tree):
    record("auth/001_create_users", tree_dir=sql_tree.path)
    with connection.cursor() as cursor:  # what an interrupted REINDEX CONCURRENTLY leaves, by name
        cursor.execute("CREATE TABLE users (id int); CREATE INDEX users_id_idx_ccnew ON users (id)")
    html = admin_client.get(CHANGELIST).content.decode()
    problems = re.search(r'<ul class="messagelist" id="nixmig-problems">(.*?)</ul>', html, re.S).group(1)
    assert (
        "warning: index public.users_id_idx_ccnew on users (left by an interrupted REINDEX CONCURRENTLY)"
        in problems
    )
    assert "DROP INDEX CONCURRENTLY IF EXISTS &quot;public&quot;.&quot;users_id_idx_ccnew&quot;;" in problems


def test_changelist_of_a_database_without_the_tracking_table_lists_everything_as_pending(
    admin_client, sql_tree
):
    html = admin_client.get(CHANGELIST).content.decode()
    assert "The tracking table doesn't exist yet" in html
    assert len(pending(html)) == 4
    assert rows(html) == []
    assert "migrations" not in connection.introspection.table_names()  # the admin never creates it


def test_changelist_reports_an_unreadable_migrations_directory(admin_client, settings, tmp_path):
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tmp_path / "nowhere")}
    html = admin_client.get(CHANGELIST).content.decode()
    assert f"The migrations directory {tmp_path / 'nowhere'} does not exist" in html


def test_detail_shows_up_and_down_sql_from_disk_highlighted(admin_client, sql_tree):
    record("orgs/002_create_orgs", tree_dir=sql_tree.path)
    pk = connection.cursor().execute("SELECT id FROM migrations").fetchone()[0]
    html = admin_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert "<h3>Up SQL <code>orgs/002_create_orgs_up.sql</code></h3>" in html
    assert "<h3>Down SQL <code>orgs/002_create_orgs_down.sql</code></h3>" in html
    assert (
        '<pre class="nixmig-sql"><span class="sql-comment">-- the orgs</span>\n'
        '<span class="sql-keyword">CREATE</span> <span class="sql-keyword">TABLE</span> orgs (id serial '
        '<span class="sql-keyword">PRIMARY</span> <span class="sql-keyword">KEY</span>, name text '
        '<span class="sql-keyword">DEFAULT</span> <span class="sql-string">&#x27;x&#x27;</span>);\n</pre>'
    ) in html
    assert (
        '<pre class="nixmig-sql"><span class="sql-keyword">DROP</span> <span class="sql-keyword">TABLE</span> '
        "orgs;\n</pre>"
    ) in html


def test_detail_says_when_the_file_changed_since_it_was_applied(admin_client, sql_tree):
    record("auth/001_create_users", tree_dir=sql_tree.path)
    sql_tree.write("auth/001_create_users_up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY);\n")
    pk = connection.cursor().execute("SELECT id FROM migrations").fetchone()[0]
    html = admin_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert "The file was changed after it was applied" in html
    assert "sqlmigrate_repair" in html
    assert "bigserial" in html  # what is on disk now


def test_detail_says_when_the_files_are_missing_or_there_is_no_down_file(admin_client, sql_tree):
    record("auth/001_create_users", "billing/004_create_invoices", tree_dir=sql_tree.path)
    (sql_tree.path / "auth" / "001_create_users_up.sql").unlink()
    ids = dict(connection.cursor().execute("SELECT name, id FROM migrations").fetchall())
    html = admin_client.get(f"{CHANGELIST}{ids['001_create_users']}/change/").content.decode()
    assert f"The files of auth/001_create_users are missing from {sql_tree.path}." in html
    assert '<td class="field-checksum">' not in html  # detail page, not the list
    html = admin_client.get(f"{CHANGELIST}{ids['004_create_invoices']}/change/").content.decode()
    assert "There is no down file (004_create_invoices_down.sql): this migration is irreversible." in html
    html = admin_client.get(CHANGELIST).content.decode()
    assert '<td class="field-checksum">file missing</td>' in html


def test_superusers_can_not_add_change_or_delete_records(admin_client, sql_tree):
    record("auth/001_create_users", tree_dir=sql_tree.path)
    pk = connection.cursor().execute("SELECT id FROM migrations").fetchone()[0]
    html = admin_client.get(CHANGELIST).content.decode()
    assert f'href="{CHANGELIST}add/"' not in html and 'name="action"' not in html
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{pk}/delete/").status_code == 403
    detail = admin_client.get(f"{CHANGELIST}{pk}/change/").content.decode()
    assert 'name="_save"' not in detail and "deletelink" not in detail
    response = admin_client.post(f"{CHANGELIST}{pk}/change/", {"name": "999_forged", "module": "auth"})
    assert response.status_code == 403
    assert connection.cursor().execute("SELECT name FROM migrations").fetchall() == [("001_create_users",)]


def test_staff_need_the_view_permission(client, sql_tree):
    record("auth/001_create_users", tree_dir=sql_tree.path)
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_migrationrecord"))
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert rows(response.content.decode()) == ["auth/001_create_users"]


def test_the_model_has_only_the_view_permission():
    assert set(
        Permission.objects.filter(content_type__app_label="nixmig").values_list("codename", flat=True)
    ) == {"view_migrationrecord"}


def test_anonymous_users_are_sent_to_the_login_page(client, sql_tree):
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={CHANGELIST}"


def test_the_changelist_lists_pending_files_a_run_would_refuse(admin_client, tree, settings):
    """Issue 9: refusals are reported before anything runs, in the admin as in sqlmigrate_status."""
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.pair("a/001_cic", "CREATE TABLE x (id int);\nCREATE INDEX CONCURRENTLY x_idx ON x (id);\n", "")
    tree.pair("a/002_rollback", "CREATE TABLE y (id int);\nROLLBACK;\n", "")
    html = admin_client.get(CHANGELIST).content.decode()
    assert "a/001_cic_up.sql:2: CREATE INDEX CONCURRENTLY can&#x27;t run inside a transaction" in html
    assert "a/002_rollback_up.sql:2: a top-level ROLLBACK would end" in html
