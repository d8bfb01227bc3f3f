"""The linter's schema model: each statement's effect on tables, columns, indexes and constraints
(created, renamed, altered, dropped), so that lock and rewrite findings fire only for objects that
exist with rows before the plan, breaking-change findings only for objects that existed before it,
and an IF EXISTS target that does not exist is never a finding. Then the gate in sqlmigrate_up,
which refuses only errors on objects the live catalog shows, and ``sqlmigrate_lint --since``.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.test_lint import NO_TX, rules, run

# -- the defects real trees hit, each as its smallest plan ------------------------------------------


def test_index_renamed_in_the_plan_stays_new():  # L1
    plan = (
        "CREATE TABLE t (a int);\nCREATE INDEX t_a_old ON t (a);",
        "ALTER INDEX t_a_old RENAME TO t_a_new;",
        "DROP INDEX t_a_new;",
    )
    assert rules(*plan) == []


def test_a_renamed_table_keeps_its_column_types():  # L2
    plan = (
        "CREATE TABLE t (name varchar(20));",
        "ALTER TABLE t RENAME TO u;",
        "ALTER TABLE u ALTER name TYPE varchar(255);",
    )
    assert rules(*plan) == []
    # each file deployed before the next (--all): the rename breaks running code, the widening is free
    assert rules(*plan, separate=True) == ["rename-table"]


def test_drop_index_if_exists_of_an_index_that_does_not_exist_is_no_finding():  # L3
    assert rules("DROP INDEX IF EXISTS t_never_created;") == []
    constraint_then_index = (
        "CREATE TABLE t (a int CONSTRAINT t_a_key UNIQUE);",
        "ALTER TABLE t DROP CONSTRAINT t_a_key;\nDROP INDEX IF EXISTS t_a_key;",
    )
    assert rules(*constraint_then_index, separate=True) == []


def test_a_column_added_earlier_in_the_plan_is_new():  # L4
    assert rules("ALTER TABLE t ADD COLUMN c int;", "ALTER TABLE t DROP COLUMN c;") == []
    assert rules("ALTER TABLE t ADD COLUMN c int;", "ALTER TABLE t RENAME COLUMN c TO d;") == []
    assert rules("ALTER TABLE t ADD COLUMN c int;", "ALTER TABLE t DROP COLUMN c;", separate=True) == [
        "drop-column"
    ]


def test_create_without_if_not_exists_names_the_statement_and_spares_create_table():  # L5
    assert rules(NO_TX + "CREATE TABLE t (id int);") == []
    (f,) = run(NO_TX + "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);")
    assert f.rule == "create-without-if-not-exists"
    assert "{what}" not in f.message and "CREATE INDEX CONCURRENTLY fails with 'already exists'" in f.message


def test_unnamed_create_index_concurrently_is_a_warning():
    (f,) = run(NO_TX + "CREATE INDEX CONCURRENTLY ON users (email);")
    assert (f.rule, f.level) == ("unnamed-concurrent-index", "warning")
    assert "name the index so a resume can find it" in f.message
    assert rules(NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);") == []


# -- the model, one kind of change at a time ------------------------------------------------------------


def test_created_objects_are_new_in_their_plan_and_deployed_in_the_next():
    created = "CREATE TABLE t (id int, v varchar(10));\nCREATE INDEX t_v ON t (v);"
    later = "ALTER TABLE t ALTER v TYPE int USING 0;\nDROP INDEX t_v;\nALTER TABLE t DROP COLUMN id;"
    assert rules(created, later) == []
    assert rules(created, later, separate=True) == [
        "alter-column-type",
        "drop-index-not-concurrently",
        "drop-column",
    ]


def test_if_not_exists_of_an_existing_object_creates_nothing_new():
    deployed = "CREATE TABLE t (id int);"
    again = "CREATE TABLE IF NOT EXISTS t (id int);\nCREATE INDEX t_id ON t (id);"
    assert rules(deployed, again, separate=True) == ["create-index-not-concurrently"]
    assert (
        rules(deployed, "CREATE TABLE IF NOT EXISTS u (id int);\nCREATE INDEX u_id ON u (id);", separate=True)
        == []
    )


def test_renames_follow_tables_columns_indexes_and_constraints():
    deployed = "CREATE TABLE t (id int, v varchar(10));\nCREATE INDEX t_v ON t (v);"
    assert rules(
        deployed,
        "ALTER TABLE t RENAME COLUMN v TO w;",
        "ALTER TABLE t ALTER w TYPE varchar(20);",
        separate=True,
    ) == ["rename-column"]
    assert rules(deployed, "ALTER INDEX t_v RENAME TO t_w;", "DROP INDEX t_w;", separate=True) == [
        "drop-index-not-concurrently"
    ]
    assert rules(deployed, "ALTER TABLE t RENAME TO u;\nDROP INDEX IF EXISTS t_v;", separate=True) == [
        "rename-table",
        "drop-index-not-concurrently",
    ]  # the index moves with its table, and still exists
    # a table created in the plan and renamed is still new, and so are its indexes
    assert (
        rules(
            "CREATE TABLE n (id int);\nCREATE INDEX n_id ON n (id);",
            "ALTER TABLE n RENAME TO m;\nDROP INDEX n_id;\nALTER TABLE m DROP COLUMN id;",
        )
        == []
    )


def test_dropped_objects_are_gone_for_later_if_exists_statements():
    deployed = "CREATE TABLE t (id int, v int);\nCREATE INDEX t_v ON t (v);"
    assert rules(
        deployed, "DROP TABLE t;", "DROP INDEX IF EXISTS t_v;\nDROP TABLE IF EXISTS t;", separate=True
    ) == ["drop-table"]
    assert rules(
        deployed, "ALTER TABLE t DROP COLUMN v;", "ALTER TABLE t DROP COLUMN IF EXISTS v;", separate=True
    ) == ["drop-column"]
    # a table dropped and created again in the plan is new
    assert rules(
        deployed, "DROP TABLE t;\nCREATE TABLE t (id int);\nCREATE INDEX t_id ON t (id);", separate=True
    ) == ["drop-table"]


def test_altered_column_types_are_remembered():
    deployed = "CREATE TABLE t (v varchar(10));"
    assert rules(
        deployed, "ALTER TABLE t ALTER v TYPE text;", "ALTER TABLE t ALTER v TYPE varchar(5);", separate=True
    ) == ["alter-column-type"]  # text -> varchar(5) rewrites; varchar(10) -> text does not


def test_unknown_tables_are_assumed_deployed_without_a_database():
    (f,) = run("CREATE INDEX users_email_idx ON users (email);")
    assert f.rule == "create-index-not-concurrently" and not f.certain


# -- the gate in sqlmigrate_up: the live catalog decides --------------------------------------------------


def up(db, tree, *args):
    return db.run("sqlmigrate_up", *args, dir=str(tree), verbosity=1)


REAL_DEFECTS = {
    "l1": [
        "CREATE TABLE t (a int);\nCREATE INDEX t_a_old ON t (a);\n",
        "ALTER INDEX t_a_old RENAME TO t_a_new;\n",
        "DROP INDEX t_a_new;\n",
    ],
    "l2": [
        "CREATE TABLE t (name varchar(20));\n",
        "ALTER TABLE t RENAME TO u;\n",
        "ALTER TABLE u ALTER name TYPE varchar(255);\n",
    ],
    "l3": ["DROP INDEX IF EXISTS t_never_created;\n"],
    "l4": [
        "CREATE TABLE t (id int);\n",
        "ALTER TABLE t ADD COLUMN c int;\n",
        "ALTER TABLE t DROP COLUMN c;\n",
    ],
}


@pytest.mark.parametrize("case", sorted(REAL_DEFECTS))
def test_up_applies_the_real_defect_plans_on_an_empty_database(scratch_db, tree, case):
    for i, text in enumerate(REAL_DEFECTS[case], 1):
        tree.pair(f"app/{i:03d}_step", text, None)
    out, err, rc = up(scratch_db, tree)
    assert rc == 0, err
    assert len(scratch_db.records()) == len(REAL_DEFECTS[case])


def test_up_on_a_deployed_table_applies_a_column_added_and_dropped_in_the_plan(scratch_db, tree):  # L4
    tree.pair("app/001_t", "CREATE TABLE t (id int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    scratch_db.sql("INSERT INTO t SELECT g FROM generate_series(1, 20000) g; ANALYZE t")
    tree.pair("app/002_add", "ALTER TABLE t ADD COLUMN c int;\n", None)
    tree.pair("app/003_drop", "ALTER TABLE t DROP COLUMN c;\n", None)
    out, err, rc = up(scratch_db, tree)
    assert rc == 0, err
    assert scratch_db.records()[-1] == ("app", "003_drop")


def test_up_refuses_errors_on_tables_the_catalog_shows(scratch_db, tree):
    tree.pair("app/001_t", "CREATE TABLE t (id int, v int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    scratch_db.sql("INSERT INTO t SELECT g, g FROM generate_series(1, 20000) g; ANALYZE t")
    tree.pair("app/002_index", "CREATE INDEX t_v ON t (v);\n", None)
    out, err, rc = up(scratch_db, tree)
    assert rc == 1 and "error [create-index-not-concurrently]" in err
    assert scratch_db.records() == [("app", "001_t")]


def test_up_warns_but_runs_what_the_catalog_can_not_resolve(scratch_db, tree):
    # a table made by dynamic SQL is invisible to the model; VACUUM FULL of every table names none
    tree.pair(
        "app/001_dynamic",
        "DO $$ BEGIN EXECUTE 'CREATE TABLE d (id int)'; END $$;\nCREATE INDEX d_id ON d (id);\n",
        None,
    )
    tree.pair("app/002_vacuum", "-- nixmig:no-transaction\nVACUUM FULL;\n", None)
    out, err, rc = up(scratch_db, tree)
    assert rc == 0, err
    assert "none blocking" in err and "1 warning(s)" in err
    assert scratch_db.records() == [("app", "001_dynamic"), ("app", "002_vacuum")]


def test_up_skips_if_exists_targets_missing_from_the_catalog(scratch_db, tree):
    tree.pair("app/001_t", "CREATE TABLE t (id int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    scratch_db.sql("INSERT INTO t SELECT g FROM generate_series(1, 20000) g; ANALYZE t")
    tree.pair(
        "app/002_cleanup", "DROP INDEX IF EXISTS t_gone;\nALTER TABLE t DROP COLUMN IF EXISTS gone;\n", None
    )
    out, err, rc = up(scratch_db, tree)
    assert rc == 0, err
    assert "Lint:" not in err


def test_lint_of_pending_migrations_on_an_empty_table_finds_no_lock(scratch_db, tree):
    tree.pair("app/001_t", "CREATE TABLE t (id int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    tree.pair("app/002_index", "CREATE INDEX t_id ON t (id);\n", None)
    out, err, rc = scratch_db.run("sqlmigrate_lint", dir=str(tree))
    assert rc == 0 and "No findings" in out, out + err


# -- sqlmigrate_lint --since GIT_REF ---------------------------------------------------------------


def git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tree):
    tree.pair("app/001_create_users", "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n", None)
    git(tree.path.parent, "init", "-q", "-b", "main")
    git(tree.path.parent, "add", "-A")
    git(tree.path.parent, "commit", "-q", "-m", "deployed")
    return tree


def lint_call(*args, **options):
    from tests.test_lint import call

    return call(*args, **options)


def test_since_lints_the_new_files_as_one_plan_over_the_deployed_ones(repo):
    repo.pair("app/002_create_orders", "CREATE TABLE orders (id bigint, user_id bigint);\n", None)
    repo.pair("app/003_index_orders", "CREATE INDEX orders_user_idx ON orders (user_id);\n", None)
    out, err, rc = lint_call("--since", "main", dir=str(repo))
    assert rc == 0, out + err
    assert "No findings in 2 migration(s) added or changed since main" in out
    assert "1 older migration(s) taken as deployed" in out
    # --all lints each file as if the ones before were deployed: the index is on a deployed table there
    assert lint_call("--all", dir=str(repo))[2] == 1


def test_since_reports_what_touches_deployed_tables(repo):
    repo.pair("app/002_index_users", "CREATE INDEX users_email_idx ON users (email);\n", None)
    out, err, rc = lint_call("--since", "main", dir=str(repo))
    assert rc == 1 and "app/002_index_users_up.sql:1:1: error [create-index-not-concurrently]" in out
    assert "added or changed since main" in out and "taken as deployed" in out


def test_since_counts_an_edited_file_as_changed(repo):
    (repo.path / "app" / "001_create_users_up.sql").write_text(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\nCREATE INDEX users_email_idx ON users (email);\n"
    )
    out, err, rc = lint_call("--since", "main", dir=str(repo))
    assert rc == 0 and "1 migration(s) added or changed since main" in out, out + err


def test_since_an_unknown_ref_is_one_clear_error(repo):
    out, err, rc = lint_call("--since", "no-such-ref", dir=str(repo))
    assert rc == 1 and "no-such-ref" in err and "Traceback" not in err


def test_all_says_which_mode_and_assumptions_it_used(repo):
    out, err, rc = lint_call("--all", dir=str(repo))
    assert rc == 0
    assert "each file as if the ones before it were deployed" in out


def test_raising_a_timestamp_precision_is_not_a_rewrite():
    deployed = "CREATE TABLE t (at timestamp(3), tz timestamptz(0), d interval(2));"
    widen = "ALTER TABLE t ALTER at TYPE timestamp, ALTER tz TYPE timestamptz(6), ALTER d TYPE interval;"
    assert rules(deployed, widen, separate=True) == []
    assert rules(deployed, "ALTER TABLE t ALTER at TYPE timestamp(0);", separate=True) == [
        "alter-column-type"
    ]


def test_status_and_pending_lint_count_what_up_would_refuse(scratch_db, tree):
    tree.pair("app/001_t", "CREATE TABLE t (id int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    tree.pair("app/002_vacuum", "-- nixmig:no-transaction\nVACUUM FULL;\n", None)  # names no table
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert "Lint: 1 warning in the pending migrations" in out, out
    out, err, rc = scratch_db.run("sqlmigrate_lint", dir=str(tree))
    assert rc == 0 and "warning [vacuum-full]" in out, out + err


def test_test_databases_are_built_without_the_lint_gate(scratch_db, tree):
    from nixmig import api, testing
    from nixmig.exceptions import LintError
    from nixmig.tree import load_tree

    tree.pair("app/001_t", "CREATE TABLE t (id int);\n", None)
    assert up(scratch_db, tree)[2] == 0
    scratch_db.sql("INSERT INTO t SELECT g FROM generate_series(1, 20000) g; ANALYZE t")
    tree.pair("app/002_index", "CREATE INDEX t_id ON t (id);\n", None)
    with pytest.raises(LintError):  # a deploy refuses it
        api.migrate_up(database=scratch_db.alias, tree=load_tree(tree.path))
    # the one path every test-database build (template, kept database, plain) applies through
    result = testing._migrate_up(database=scratch_db.alias, tree=load_tree(tree.path))
    assert [e.id for e in result.done] == ["app/002_index"]
