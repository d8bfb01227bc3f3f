"""sqlmigrate_verify and --drift in a real Django project: the project's baseline (Django's own
migrations, setup SQL), each migration judged on a clean state, values frozen at creation, and
schema targets.

The test project has django.contrib.auth, admin, contenttypes and sessions installed, like a
fresh ``startproject``; every test runs against a real PostgreSQL.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from django.core.management import call_command


def verify_json(db, tree, **options) -> tuple[dict, str, int]:
    out, err, rc = db.run("sqlmigrate_verify", dir=str(tree), json=True, **options)
    assert out.strip(), err
    return json.loads(out), err, rc


def results(report: dict) -> dict[str, str]:
    return {m["id"]: m["result"] for m in report["migrations"]}


def messages(report: dict, migration_id: str) -> list[str]:
    found = next(m for m in report["migrations"] if m["id"] == migration_id)
    return [f["message"] for f in found["findings"]]


def django_migrate(db, *args) -> None:
    call_command("migrate", *args, database=db.alias, verbosity=0, interactive=False)


@pytest.fixture
def orders(tree):
    """Two modules of a startproject-like project; one references Django's auth_user."""
    tree.pair(
        "shop/001_create_orders",
        "CREATE TABLE orders (id serial PRIMARY KEY, total numeric NOT NULL DEFAULT 0);\n"
        "ALTER TABLE orders ADD COLUMN user_id integer REFERENCES auth_user (id);\n"
        "CREATE INDEX orders_user_idx ON orders (user_id);\n",
        "DROP TABLE orders;\n",
    )
    tree.pair(
        "billing/002_create_invoices",
        "CREATE TABLE invoices (id serial PRIMARY KEY, order_id integer NOT NULL REFERENCES orders (id),\n"
        "    created_by integer REFERENCES auth_user (id) ON DELETE SET NULL);\n",
        "DROP TABLE invoices;\n",
    )
    return tree


# -- the project's baseline ----------------------------------------------------------------------


def test_a_migration_with_a_foreign_key_to_auth_user_verifies_exact(scratch_db, orders):
    report, err, rc = verify_json(scratch_db, orders)
    assert rc == 0, err
    assert results(report) == {"shop/001_create_orders": "exact", "billing/002_create_invoices": "exact"}


@pytest.fixture
def django_project(scratch_db, orders):
    """A live database as a deploy leaves it: Django's migrations, then the SQL tree."""
    django_migrate(scratch_db)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(orders), verbosity=0)
    assert rc == 0, err
    return scratch_db


def test_drift_on_an_in_sync_django_project_exits_0(django_project, orders):
    out, err, rc = django_project.run("sqlmigrate_verify", dir=str(orders), drift=True)
    assert rc == 0, out + err
    assert out.splitlines()[-1] == (
        f"No drift: database '{django_project.alias}' matches its 2 applied migration(s)."
    )


def test_a_hand_added_column_is_the_only_drift_listed(django_project, orders):
    django_project.sql("ALTER TABLE orders ADD COLUMN note text")
    report, err, rc = verify_json(django_project, orders, drift=True)
    assert rc == 1, err
    drift = report["drift"]
    assert drift["only_live"] == [
        {"kind": "column", "name": "public.orders.note", "tree": None, "live": "text"}
    ]
    assert drift["only_tree"] == [] and drift["different"] == []


def test_drift_ignore_patterns_leave_out_objects_made_outside_the_tree(django_project, orders, settings):
    django_project.sql("CREATE TABLE legacy_import (id int PRIMARY KEY, payload text)")
    django_project.sql("CREATE INDEX legacy_import_payload_idx ON legacy_import (payload)")
    django_project.sql("CREATE TABLE audit_copy (id int)")
    report, err, rc = verify_json(django_project, orders, drift=True, ignore=["legacy_*"])
    assert rc == 1, err
    assert [d["name"] for d in report["drift"]["only_live"]] == ["public.audit_copy"]
    settings.NIXMIG = dict(settings.NIXMIG, DRIFT_IGNORE=["audit_*"])
    report, err, rc = verify_json(django_project, orders, drift=True, ignore=["legacy_*"])
    assert rc == 0, err
    assert report["drift"]["ok"] is True


def test_drift_says_which_django_migrations_are_not_applied_instead_of_listing_their_tables(
    django_project, orders
):
    django_migrate(django_project, "sessions", "zero")
    out, err, rc = django_project.run("sqlmigrate_verify", dir=str(orders), drift=True)
    assert rc == 0, out + err
    assert "django_session" not in out
    assert (
        f"Note: 1 Django migration(s) are not applied in database '{django_project.alias}' "
        "(sessions.0001_initial): the comparison leaves them out too; run 'manage.py migrate' to apply them."
    ) in out


# -- setup SQL ----------------------------------------------------------------------------------


@pytest.fixture
def tool_table(tree, tmp_path):
    """A tree whose migrations alter a table that another tool (the deploy) makes."""
    tree.pair(
        "app/001_version_column",
        "ALTER TABLE schema_migrations ADD COLUMN data_version integer;\n",
        "ALTER TABLE schema_migrations DROP COLUMN data_version;\n",
    )
    tree.table_pair("app/002_create_things", "things")
    setup = tmp_path / "setup.sql"
    setup.write_text("CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);\n")
    return tree, setup


def test_without_its_setup_the_first_migration_fails(scratch_db, tool_table):
    tree, _ = tool_table
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 1
    assert results(report) == {"app/001_version_column": "failed", "app/002_create_things": "exact"}
    assert 'relation "schema_migrations" does not exist' in messages(report, "app/001_version_column")[0]


def test_setup_sql_makes_what_the_deploy_makes_and_the_tree_verifies_fully(scratch_db, tool_table):
    tree, setup = tool_table
    report, err, rc = verify_json(scratch_db, tree, setup_sql=[str(setup)])
    assert rc == 0, err
    assert results(report) == {"app/001_version_column": "exact", "app/002_create_things": "exact"}


def test_verify_setup_setting_takes_files_or_a_callable(scratch_db, tool_table, settings):
    tree, setup = tool_table
    settings.NIXMIG = dict(settings.NIXMIG, VERIFY_SETUP=[str(setup)])
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 0, err
    made = []

    def make(connection):
        made.append(connection.alias)
        with connection.cursor() as cursor:
            cursor.execute(setup.read_text())

    settings.NIXMIG = dict(settings.NIXMIG, VERIFY_SETUP=make)
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 0, err
    assert len(made) == 1  # once per run, in the baseline


def test_a_failing_setup_file_is_one_paragraph_naming_file_and_line(scratch_db, tool_table, tmp_path):
    tree, _ = tool_table
    bad = tmp_path / "bad_setup.sql"
    bad.write_text("CREATE SCHEMA deploy;\n\nCREATE TABLE deploy.t (id int REFERENCES nope (id));\n")
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), setup_sql=[str(bad)])
    assert rc == 2
    assert err.startswith(f"The setup file {bad} failed at line 3: ")
    assert 'relation "nope" does not exist' in err
    assert "Traceback" not in err


# -- each migration judged on a clean state -----------------------------------------------------


def test_a_down_that_is_not_exact_is_not_blamed_on_later_migrations(scratch_db, tree):
    tree.pair("x/001_create_t", "CREATE TABLE t (id int PRIMARY KEY, c int);\n", "DROP TABLE t;\n")
    tree.pair("x/002_nothing", "SELECT 1;\n", "ALTER TABLE t DROP COLUMN c;\n")
    tree.pair("x/003_index_c", "CREATE INDEX t_c_idx ON t (c);\n", "DROP INDEX t_c_idx;\n")
    tree.table_pair("x/004_create_u", "u")
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 1
    assert results(report) == {
        "x/001_create_t": "exact",
        "x/002_nothing": "not exact",
        "x/003_index_c": "exact",
        "x/004_create_u": "exact",
    }
    findings = next(m for m in report["migrations"] if m["id"] == "x/002_nothing")["findings"]
    assert [f["message"] for f in findings] == [
        "down drops column `t.c`, which the up did not create",
        "the up run again after its down lacks column `t.c`, which the first run created",
    ]
    assert {f["file"] for f in findings} == {"x/002_nothing_down.sql"}  # the file that causes both


# -- values frozen at creation ------------------------------------------------------------------


def test_a_value_frozen_at_creation_is_not_a_difference(scratch_db, tree):
    tree.pair(
        "x/001_report_view",
        "CREATE VIEW report AS SELECT 'now'::timestamp AS made, 1 AS n;\n",
        "DROP VIEW report;\n",
    )
    tree.pair(
        "x/002_stamped",
        "CREATE TABLE stamped (id int, at timestamptz DEFAULT 'now', day date DEFAULT current_date);\n",
        "DROP TABLE stamped;\n",
    )
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 0, err
    assert results(report) == {"x/001_report_view": "warning", "x/002_stamped": "warning"}
    assert messages(report, "x/001_report_view") == [
        "the up run again after its down gives view `report` that differs only by a value frozen at "
        "creation (a time, date or random value evaluated when the up ran)"
    ]


def test_the_not_exact_heading_is_never_printed_over_nothing(scratch_db, tree):
    tree.pair("x/001_t", "CREATE TABLE t (id int);\n", None)
    tree.pair("x/002_u", "CREATE TABLE u (id int);\n", None)
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree))
    assert rc == 0, err
    assert "Round trips that are not exact:" not in out
    assert " [>] x/001_t: irreversible" in out


# -- schema targets ----------------------------------------------------------------------------


@pytest.fixture
def tenant_tree(tree):
    tree.pair(
        "app/001_create_notes",
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"
        "CREATE INDEX notes_body_idx ON notes (body);\n",
        "DROP TABLE notes;\n",
    )
    tree.pair(
        "app/002_add_title",
        "ALTER TABLE notes ADD COLUMN title text;\n",
        "ALTER TABLE notes DROP COLUMN title;\n",
    )
    return tree


def test_verify_runs_per_schema_target(scratch_db, tenant_tree):
    report, err, rc = verify_json(scratch_db, tenant_tree, schemas=["tenant_a"], keep=True)
    kept = report["scratch_database"]
    try:
        assert rc == 0, err
        assert results(report) == {"app/001_create_notes": "exact", "app/002_add_title": "exact"}
        with psycopg.connect(scratch_db.url.rsplit("/", 1)[0] + "/" + kept) as laid_out:
            rows = laid_out.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name IN ('notes', 'migrations') ORDER BY 1, 2"
            ).fetchall()
        assert rows == [("tenant_a", "migrations"), ("tenant_a", "notes")]  # laid out as the target
    finally:
        scratch_db.sql(f'DROP DATABASE IF EXISTS "{kept}" WITH (FORCE)')


def test_drift_runs_per_schema_target(scratch_db, tenant_tree):
    for schema in ("tenant_a", "tenant_b"):
        out, err, rc = scratch_db.run(
            "sqlmigrate_up", dir=str(tenant_tree), schemas=[schema], create_schemas=True, verbosity=0
        )
        assert rc == 0, err
    scratch_db.sql("ALTER TABLE tenant_b.notes ADD COLUMN flag boolean")
    report, err, rc = verify_json(scratch_db, tenant_tree, drift=True, schemas=["tenant_a", "tenant_b"])
    assert rc == 1, err
    key_a, key_b = f"{scratch_db.alias}:tenant_a", f"{scratch_db.alias}:tenant_b"
    assert report[key_a]["drift"]["ok"] is True
    assert report[key_b]["drift"]["only_live"] == [
        {"kind": "column", "name": "tenant_b.notes.flag", "tree": None, "live": "boolean"}
    ]
    assert report[key_b]["drift"]["only_tree"] == [] and report[key_b]["drift"]["different"] == []


def test_after_a_failed_no_transaction_up_the_run_goes_on_from_a_clean_replay(scratch_db, tree):
    tree.table_pair("x/001_create_t1", "t1")
    tree.pair(
        "x/002_half",  # its first statement commits before the second fails
        "-- nixmig:no-transaction\nCREATE TABLE half (id int);\nCREATE TABLE t2 (id int REFERENCES nope (id));\n",
        "DROP TABLE t2;\nDROP TABLE half;\n",
    )
    tree.pair("x/003_leaves_t3", "CREATE TABLE t3 (id int);\n", "SELECT 1;\n")  # rebuilt after it
    tree.pair("x/004_create_half", "CREATE TABLE half (id int);\n", "DROP TABLE half;\n")
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 1
    assert (
        results(report)
        == {
            "x/001_create_t1": "exact",
            "x/002_half": "failed",
            "x/003_leaves_t3": "not exact",
            "x/004_create_half": "exact",  # nothing of 002 is left, in the first scratch database or the rebuilt one
        }
    )


def test_temporary_tables_of_an_up_do_not_stop_it_running_again(scratch_db, tree):
    # Each command runs on a connection of its own: a temporary table the up leaves is gone when
    # the down and the second up run, as it is in production.
    tree.pair(
        "x/001_backfill",
        "CREATE TABLE t (id int);\nCREATE TEMP TABLE scratchpad AS SELECT 1 AS x;\nINSERT INTO t SELECT x FROM scratchpad;\n",
        "DROP TABLE t;\n",
    )
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 0, err
    assert results(report) == {"x/001_backfill": "exact"}
