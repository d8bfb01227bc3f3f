"""sqlmigrate_lint: a failing and a passing example per rule, the context rules, suppression,
settings, output formats, and the integration into sqlmigrate_up / sqlmigrate_status / the admin.

Rule tests are pure (``lint_files`` on files in memory: no database); the context that needs a
server (table sizes, the server's version, constraints and column types) runs on a real one.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nixmig import lint
from nixmig.tree import SqlFile, parse_directives

# -- pure: one plan of files in memory --------------------------------------------------------------


def sql_file(text: str, name: str = "app/001_change_up.sql") -> SqlFile:
    text = textwrap.dedent(text).lstrip("\n")
    directives, problems = parse_directives(text, name)
    assert not problems, problems
    return SqlFile(Path("/migrations") / name, name, text, "0" * 64, directives)


def run(*texts: str, settings: lint.Settings | None = None, pg: int | None = None, separate: bool = False):
    """Lint ``texts`` as the files of one plan, in order; return the findings."""
    files = [
        (f"app/{i:03d}_change", sql_file(t, f"app/{i:03d}_change_up.sql")) for i, t in enumerate(texts, 1)
    ]
    return lint.lint_files(files, pg_version=pg, settings=settings, separate=separate).findings


def rules(*texts: str, **options) -> list[str]:
    return [f.rule for f in run(*texts, **options)]


NO_TX = "-- nixmig:no-transaction\n"
ALL_TYPES = lint.Settings.build(
    {"prefer-bigint": "info", "prefer-identity": "info", "prefer-text": "info", "prefer-timestamptz": "info"}
)
NO_RUNNER_TIMEOUT = lint.Settings.build({}, lock_timeout="0")

# rule id -> (files that break it, files that are the safe way to write the same thing)
CASES = {
    "create-index-not-concurrently": (
        ["CREATE INDEX users_email_idx ON users (email);"],
        [NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"],
    ),
    "drop-index-not-concurrently": (
        ["DROP INDEX users_email_idx;"],
        [NO_TX + "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;"],
    ),
    "reindex-not-concurrently": (["REINDEX TABLE users;"], [NO_TX + "REINDEX TABLE CONCURRENTLY users;"]),
    "concurrently-in-transaction": (
        ["CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"],
        [NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"],
    ),
    "add-constraint-without-not-valid": (
        ["ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);"],
        [
            "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT users_org_fk;",
        ],
    ),
    "validate-in-same-transaction": (
        [
            "ALTER TABLE users ADD CONSTRAINT age_positive CHECK (age > 0) NOT VALID;\n"
            "ALTER TABLE users VALIDATE CONSTRAINT age_positive;"
        ],
        [
            "ALTER TABLE users ADD CONSTRAINT age_positive CHECK (age > 0) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT age_positive;",
        ],
    ),
    "set-not-null": (
        ["ALTER TABLE users ALTER COLUMN email SET NOT NULL;"],
        [
            "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\nALTER TABLE users DROP CONSTRAINT email_nn;",
        ],
    ),
    "add-column-not-null-without-default": (
        ["ALTER TABLE users ADD COLUMN plan text NOT NULL;"],
        ["ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';"],
    ),
    "add-column-volatile-default": (
        ["ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();"],
        [
            "ALTER TABLE users ADD COLUMN token uuid;\n"
            "ALTER TABLE users ALTER COLUMN token SET DEFAULT gen_random_uuid();"
        ],
    ),
    "alter-column-type": (
        ["ALTER TABLE users ALTER COLUMN age TYPE bigint;"],
        [
            "ALTER TABLE users ADD COLUMN nick varchar(20);",
            "ALTER TABLE users ALTER COLUMN nick TYPE varchar(50);\n"
            "ALTER TABLE users ALTER COLUMN nick TYPE text;",
        ],
    ),
    "add-unique-without-using-index": (
        ["ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);"],
        [
            NO_TX + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);",
            "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;",
        ],
    ),
    "add-serial-or-identity-column": (
        ["ALTER TABLE events ADD COLUMN id bigserial PRIMARY KEY;"],
        ["ALTER TABLE events ADD COLUMN id bigint;"],
    ),
    "vacuum-full": ([NO_TX + "VACUUM FULL users;"], [NO_TX + "VACUUM (ANALYZE) users;"]),
    "cluster": (["CLUSTER users USING users_pkey;"], ["ANALYZE users;"]),
    "lock-table": (
        ["LOCK TABLE users;\nUPDATE users SET plan = 'free';"],
        ["UPDATE users SET plan = 'free';"],
    ),
    "drop-table": (["DROP TABLE users;"], ["CREATE TABLE scratch (id int);\nDROP TABLE scratch;"]),
    "drop-column": (
        ["ALTER TABLE users DROP COLUMN legacy;"],
        [
            "-- nixmig:allow drop-column: no code reads it since release 2.3\n"
            "ALTER TABLE users DROP COLUMN legacy;"
        ],
    ),
    "rename-table": (
        ["ALTER TABLE users RENAME TO accounts;"],
        ["CREATE TABLE draft (id int);\nALTER TABLE draft RENAME TO accounts;"],
    ),
    "rename-column": (
        ["ALTER TABLE users RENAME COLUMN name TO full_name;"],
        ["ALTER TABLE users ADD COLUMN full_name text;"],
    ),
    "drop-not-null": (
        ["ALTER TABLE users ALTER COLUMN bio DROP NOT NULL;"],
        ["ALTER TABLE users ALTER COLUMN bio SET DEFAULT '';"],
    ),
    "truncate-cascade": (["TRUNCATE sessions CASCADE;"], ["TRUNCATE sessions;"]),
    "transaction-control": (
        ["BEGIN;\nALTER TABLE users ADD COLUMN bio text;\nCOMMIT;"],
        ["ALTER TABLE users ADD COLUMN bio text;"],
    ),
    "identifier-too-long": ([f"CREATE TABLE {'x' * 64} (id int);"], [f"CREATE TABLE {'x' * 63} (id int);"]),
    "create-without-if-not-exists": (
        [NO_TX + "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);"],
        [NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"],
    ),
    "unnamed-concurrent-index": (
        [NO_TX + "CREATE INDEX CONCURRENTLY ON users (email);"],
        [NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);"],
    ),
    "unparsed-statement": (
        ["ALTER TABLE users ADD COLUMN bio text WITH NONSENSE;"],
        ["ALTER TABLE users ADD COLUMN bio text;"],
    ),
}
TYPE_CASES = {
    "prefer-bigint": ("CREATE TABLE t (n integer);", "CREATE TABLE t (n bigint);"),
    "prefer-identity": (
        "CREATE TABLE t (id bigserial PRIMARY KEY);",
        "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);",
    ),
    "prefer-text": ("CREATE TABLE t (name varchar(100));", "CREATE TABLE t (name text);"),
    "prefer-timestamptz": ("CREATE TABLE t (at timestamp);", "CREATE TABLE t (at timestamptz);"),
}


def test_every_rule_has_a_test_case():
    tested = set(CASES) | set(TYPE_CASES) | {"missing-lock-timeout", "bad-allow", "unused-allow"}
    assert tested == set(lint.RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_finds_the_dangerous_statement(rule):
    bad, _ = CASES[rule]
    found = [f for f in run(*bad) if f.rule == rule]
    assert found, run(*bad)
    f = found[0]
    assert f.level == lint.RULES[rule].level
    assert f.file.startswith("app/") and f.line >= 1 and f.column >= 1
    assert f.statement and f.message and f.fix


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_accepts_the_safe_way(rule):
    _, good = CASES[rule]
    assert rule not in rules(*good), run(*good)


@pytest.mark.parametrize("rule", sorted(TYPE_CASES))
def test_type_rules_are_off_by_default_and_info_when_on(rule):
    bad, good = TYPE_CASES[rule]
    assert rule not in rules(bad)
    found = [f for f in run(bad, settings=ALL_TYPES) if f.rule == rule]
    assert [f.level for f in found] == ["info"]
    assert rule not in rules(good, settings=ALL_TYPES)


def test_missing_lock_timeout_when_the_runner_sets_none():
    bad = "ALTER TABLE users ADD COLUMN bio text;"
    found = [f for f in run(bad, settings=NO_RUNNER_TIMEOUT) if f.rule == "missing-lock-timeout"]
    assert len(found) == 1 and found[0].lock == "ACCESS EXCLUSIVE" and found[0].table == "users"
    assert "missing-lock-timeout" not in rules(
        "-- nixmig:lock-timeout=5s\n" + bad, settings=NO_RUNNER_TIMEOUT
    )
    assert "missing-lock-timeout" not in rules("SET lock_timeout = '5s';\n" + bad, settings=NO_RUNNER_TIMEOUT)
    # nixmig's own NIXMIG['LOCK_TIMEOUT'] (10s by default) counts as set
    assert "missing-lock-timeout" not in rules(bad)
    # a new table has no queue of readers behind it
    assert "missing-lock-timeout" not in rules(
        "CREATE TABLE t (id int);\nALTER TABLE t ADD COLUMN bio text;", settings=NO_RUNNER_TIMEOUT
    )


def test_finding_says_where_what_lock_on_which_table_why_and_the_fix():
    (f,) = run("-- widen the index\n\n  CREATE INDEX users_email_idx\n    ON users (email);")
    assert (f.rule, f.level, f.file, f.line, f.column) == (
        "create-index-not-concurrently",
        "error",
        "app/001_change_up.sql",
        3,
        3,
    )
    assert f.statement == "CREATE INDEX users_email_idx ..."
    assert (f.lock, f.table) == ("SHARE", "users") and "scans" in f.effect
    assert "CONCURRENTLY" in f.fix and "-- nixmig:no-transaction" in f.fix
    text = lint.render(f)
    assert text.startswith("app/001_change_up.sql:3:3: error [create-index-not-concurrently] CREATE INDEX")
    assert "SHARE lock on users" in text and "Fix: " in text


def test_not_valid_fix_names_the_two_step_way():
    (f,) = run("ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);")
    assert "NOT VALID" in f.fix and "VALIDATE CONSTRAINT in a later migration" in f.fix
    assert f.lock == "SHARE ROW EXCLUSIVE" and "orgs" in f.message


def test_check_constraint_without_not_valid_is_found_too():
    assert "add-constraint-without-not-valid" in rules("ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0);")


def test_identity_column_is_found_like_serial():
    assert "add-serial-or-identity-column" in rules(
        "ALTER TABLE events ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;"
    )


def test_every_error_of_a_file_is_reported_not_just_the_first():
    found = rules("ALTER TABLE users DROP COLUMN a;\nALTER TABLE users DROP COLUMN b;\nDROP TABLE sessions;")
    assert found == ["drop-column", "drop-column", "drop-table"]


# -- context ------------------------------------------------------------------------------------------


def test_a_table_created_earlier_in_the_same_file_is_new_so_nothing_is_found():
    assert (
        rules("""
        CREATE TABLE orders (id bigint PRIMARY KEY, total int);
        CREATE INDEX orders_total_idx ON orders (total);
        ALTER TABLE orders ADD COLUMN note text NOT NULL;
        ALTER TABLE orders ALTER COLUMN total TYPE bigint, ALTER COLUMN total SET NOT NULL;
        ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total > 0);
        ALTER TABLE orders RENAME COLUMN note TO remark;
        DROP INDEX orders_total_idx;
    """)
        == []
    )


def test_a_table_created_by_an_earlier_migration_of_the_same_plan_is_new():
    create = "CREATE TABLE orders (id bigint PRIMARY KEY, total int);"
    index = "CREATE INDEX orders_total_idx ON orders (total);"
    assert rules(create, index) == []
    # lint --all: each migration as if it ran after the ones before were deployed: the table exists
    assert rules(create, index, separate=True) == ["create-index-not-concurrently"]


def test_transaction_mode_decides_whether_concurrently_is_required_or_forbidden():
    (in_tx,) = run("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);")
    assert in_tx.rule == "concurrently-in-transaction" and "-- nixmig:no-transaction" in in_tx.fix
    (no_tx,) = run(NO_TX + "CREATE INDEX IF NOT EXISTS i ON users (email);")
    assert no_tx.rule == "create-index-not-concurrently" and "already runs outside a transaction" in no_tx.fix
    assert rules(NO_TX + "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);") == []


def test_validate_in_a_no_transaction_file_is_its_own_transaction():
    assert (
        rules(
            NO_TX + "ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0) NOT VALID;\n"
            "ALTER TABLE users VALIDATE CONSTRAINT c;"
        )
        == []
    )


def test_pg_version_decides_version_dependent_rules():
    constant_default = "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';"
    assert rules(constant_default, pg=11) == []
    assert rules(constant_default, pg=10) == ["add-column-volatile-default"]
    assert "PostgreSQL 11" in run(constant_default, pg=10)[0].message
    checked = [
        "ALTER TABLE users ADD CONSTRAINT nn CHECK (email IS NOT NULL) NOT VALID;",
        "ALTER TABLE users VALIDATE CONSTRAINT nn;",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
    ]
    assert rules(*checked, pg=12) == []
    assert rules(*checked, pg=11) == ["set-not-null"]  # before 12 SET NOT NULL always scans
    (reindex,) = run("REINDEX TABLE users;", pg=11)
    assert "PostgreSQL 12" in reindex.fix


def test_set_not_null_in_the_transaction_that_validated_the_check_still_scans():
    assert rules(
        "ALTER TABLE users ADD CONSTRAINT nn CHECK (email IS NOT NULL);\n"
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;"
    ) == ["add-constraint-without-not-valid", "set-not-null"]


def test_alter_type_with_using_rewrites_even_between_compatible_types():
    assert rules(
        "ALTER TABLE users ADD COLUMN nick varchar(20);",
        "ALTER TABLE users ALTER COLUMN nick TYPE varchar(50) USING nick::varchar(50);",
    ) == ["alter-column-type"]


def test_narrowing_a_varchar_rewrites():
    assert rules(
        "ALTER TABLE users ADD COLUMN nick varchar(50);",
        "ALTER TABLE users ALTER COLUMN nick TYPE varchar(20);",
    ) == ["alter-column-type"]


# -- suppression ----------------------------------------------------------------------------------------


def test_allow_with_a_reason_suppresses_the_finding_of_its_statement_only():
    found = run("""
        -- nixmig:allow drop-column: the code stopped reading it in 2.3
        ALTER TABLE users DROP COLUMN legacy;
        ALTER TABLE users DROP COLUMN other;
    """)
    assert [(f.rule, f.line) for f in found] == [("drop-column", 3)]


def test_allow_as_a_trailing_comment_on_the_statement_line():
    assert (
        rules(
            "ALTER TABLE users DROP COLUMN legacy; -- nixmig:allow drop-column: unused since 2.3\n"
            "ALTER TABLE users ADD COLUMN bio text;"
        )
        == []
    )


def test_allow_without_a_reason_is_an_error_and_suppresses_nothing():
    found = run("-- nixmig:allow drop-column\nALTER TABLE users DROP COLUMN legacy;")
    assert sorted(f.rule for f in found) == ["bad-allow", "drop-column"]
    bad = next(f for f in found if f.rule == "bad-allow")
    assert bad.level == "error" and bad.line == 1 and "reason" in bad.message


def test_allow_of_an_unknown_rule_is_an_error():
    found = run("-- nixmig:allow drop-everything: why not\nALTER TABLE users ADD COLUMN bio text;")
    assert [(f.rule, f.level) for f in found] == [("bad-allow", "error")]


def test_allow_that_matches_nothing_is_a_warning():
    found = run("-- nixmig:allow drop-table: leftovers\nALTER TABLE users ADD COLUMN bio text;")
    assert [(f.rule, f.level, f.line) for f in found] == [("unused-allow", "warning", 1)]


def test_allow_in_the_leading_comment_block_is_not_a_tree_error(tree):
    from nixmig.tree import load_tree

    tree.pair(
        "app/001_drop", "-- nixmig:allow drop-table: replaced by accounts in 2.0\nDROP TABLE users;\n", None
    )
    loaded = load_tree(tree.path)
    assert not loaded.errors
    assert lint.lint_tree(loaded, settings=lint.Settings.default()).findings == []


# -- settings ----------------------------------------------------------------------------------------


def test_settings_set_levels_and_turn_rules_off():
    sql = "ALTER TABLE users DROP COLUMN legacy;\nDROP TABLE sessions;"
    found = run(sql, settings=lint.Settings.build({"drop-column": "warning", "drop-table": "off"}))
    assert [(f.rule, f.level) for f in found] == [("drop-column", "warning")]


@pytest.mark.parametrize(
    "value, message",
    [
        ({"no-such-rule": "off"}, "unknown rule 'no-such-rule'"),
        ({"drop-table": "fatal"}, "is not a level"),
        (["drop-table"], "must be a dict"),
    ],
)
def test_bad_lint_settings_say_what_to_write(value, message):
    with pytest.raises(lint.NixmigError, match=message):
        lint.Settings.build(value)


# -- the command, without a database -----------------------------------------------------------------


def write_tree(tree):
    tree.pair(
        "app/001_create_users",
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n",
        "DROP TABLE users;\n",
    )
    tree.pair(
        "app/002_index_users",
        "CREATE INDEX users_email_idx ON users (email);\n",
        "DROP INDEX users_email_idx;\n",
    )
    tree.pair(
        "app/003_bio", "ALTER TABLE users ADD COLUMN bio text;\n", "ALTER TABLE users DROP COLUMN bio;\n"
    )


def call(*args, **options):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = StringIO(), StringIO()
    try:
        call_command("sqlmigrate_lint", *args, stdout=out, stderr=err, **options)
        rc = 0
    except CommandError as exc:
        err.write(str(exc))
        rc = exc.returncode
    return out.getvalue(), err.getvalue(), rc


def test_lint_all_reports_and_exits_1_on_errors(tree):
    write_tree(tree)
    out, err, rc = call("--all", dir=str(tree))
    assert rc == 1 and "Lint found 1 error(s)" in err
    assert out.startswith(
        "app/002_index_users_up.sql:1:1: error [create-index-not-concurrently] "
        "CREATE INDEX users_email_idx ON users (email)\n"
    )
    assert (
        "1 finding(s) in 3 file(s): 1 error(s), 0 warning(s), 0 info (3 migration(s), each file as if the ones before it were deployed, starting from an empty database, "
        "PostgreSQL 14)." in out
    )


def test_lint_of_ids_only_reports_those_and_exits_0_without_errors(tree):
    write_tree(tree)
    out, err, rc = call("app/003_bio", dir=str(tree))
    assert (out, rc) == (
        "No findings in 1 migration(s), each file as if the ones before it were deployed, starting from an empty database.\n",
        0,
    )
    out, err, rc = call("app/404_nothing", dir=str(tree))
    assert rc == 1 and "app/404_nothing is not a migration" in err


def test_lint_json_format(tree):
    write_tree(tree)
    out, err, rc = call("--all", "--format", "json", dir=str(tree))
    data = json.loads(out)
    assert rc == 1 and data["summary"] == {"error": 1, "warning": 0, "info": 0}
    (f,) = data["findings"]
    assert {k: f[k] for k in ("rule", "level", "migration", "file", "line", "column", "lock", "table")} == {
        "rule": "create-index-not-concurrently",
        "level": "error",
        "migration": "app/002_index_users",
        "file": "app/002_index_users_up.sql",
        "line": 1,
        "column": 1,
        "lock": "SHARE",
        "table": "users",
    }


def test_lint_github_format_annotates_the_file(tree):
    write_tree(tree)
    out, err, rc = call("--all", "--format", "github", dir=str(tree))
    (line,) = out.splitlines()
    assert line.startswith("::error file=") and "002_index_users_up.sql,line=1,col=1," in line
    assert "title=nixmig lint%3A create-index-not-concurrently::CREATE INDEX users_email_idx" in line
    assert "%0AFix: " in line


def test_lint_pg_version_option(tree):
    tree.pair("app/001_plan", "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';\n", None)
    assert call("--all", dir=str(tree))[2] == 0
    out, err, rc = call("--all", "--pg-version", "10", dir=str(tree))
    assert rc == 1 and "[add-column-volatile-default]" in out and "PostgreSQL 10" in out
    assert "not a PostgreSQL major version" in call("--all", "--pg-version", "1500", dir=str(tree))[1]


def test_lint_levels_from_settings(tree, settings):
    write_tree(tree)
    settings.NIXMIG = {**settings.NIXMIG, "LINT": {"create-index-not-concurrently": "warning"}}
    out, err, rc = call("--all", dir=str(tree))
    assert rc == 0 and "warning [create-index-not-concurrently]" in out
    settings.NIXMIG = {**settings.NIXMIG, "LINT": {"create-index-not-concurrently": "off"}}
    assert call("--all", dir=str(tree))[:3:2] == (
        "No findings in 3 migration(s), each file as if the ones before it were deployed, starting from an empty database.\n",
        0,
    )
    settings.NIXMIG = {**settings.NIXMIG, "LINT": {"create-index": "off"}}
    out, err, rc = call("--all", dir=str(tree))
    assert rc == 1 and "unknown rule 'create-index'" in err and "Traceback" not in err


def test_rules_lists_every_rule_with_its_level(settings):
    settings.NIXMIG = {**settings.NIXMIG, "LINT": {"prefer-bigint": "info"}}
    out, err, rc = call("--rules")
    assert rc == 0 and len(out.splitlines()) == len(lint.RULES)
    assert any(line.split()[:2] == ["prefer-bigint", "info"] for line in out.splitlines())
    assert any(line.split()[:2] == ["prefer-text", "off"] for line in out.splitlines())


def test_the_sample_tree_has_no_lint_errors():
    from tests.conftest import ROOT

    out, err, rc = call("--all", dir=str(ROOT / "migrations_sql"))
    assert rc == 0, out + err


def test_the_nixopus_tree_findings(nixopus_dir):
    report = lint.lint_tree(lint_tree_of(nixopus_dir), settings=lint.Settings.default())
    found = {(f.migration, f.rule) for f in report.findings}
    assert ("rbac/033_remove_rbac_tables", "drop-table") in found
    assert ("rbac/033_remove_rbac_tables", "transaction-control") in found
    assert ("domains/016_add_org_id_domain", "add-column-not-null-without-default") in found
    assert ("applications/014_change_domain_referencing", "alter-column-type") in found
    # tables created and indexed in one file are new: the many CREATE TABLE + CREATE INDEX files are clean
    assert not [f for f in report.findings if f.migration.endswith("001_create_users")]


def lint_tree_of(directory):
    from nixmig.tree import load_tree

    return load_tree(directory)


# -- with a real database ------------------------------------------------------------------------------


@pytest.fixture
def big_and_small(scratch_db, tree):
    """A database with a table of 20,000 rows and one of 100, both analyzed; a tree that created them."""
    tree.pair(
        "app/001_tables",
        "CREATE TABLE big (id bigint PRIMARY KEY, v int, s varchar(20));\n"
        "CREATE TABLE small (id bigint PRIMARY KEY, v int);\n",
        None,
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    scratch_db.sql("INSERT INTO big SELECT g, g, 'x' FROM generate_series(1, 20000) g")
    scratch_db.sql("INSERT INTO small SELECT g, g FROM generate_series(1, 100) g")
    scratch_db.sql("ANALYZE big; ANALYZE small")
    return scratch_db


def lint_db(db, *args, **options):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = StringIO(), StringIO()
    try:
        call_command("sqlmigrate_lint", *args, stdout=out, stderr=err, database=db.alias, **options)
        return out.getvalue(), err.getvalue(), 0
    except CommandError as exc:
        return out.getvalue(), err.getvalue() + str(exc), exc.returncode


def test_lock_findings_on_small_tables_are_downgraded_to_info(big_and_small, tree):
    tree.pair(
        "app/002_indexes",
        "CREATE INDEX big_v_idx ON big (v);\nCREATE INDEX small_v_idx ON small (v);\n",
        None,
    )
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    assert rc == 1
    assert "app/002_indexes_up.sql:1:1: error [create-index-not-concurrently]" in out
    assert "app/002_indexes_up.sql:2:1: info [create-index-not-concurrently]" in out
    assert "about 100 rows" in out and "tables sized" in out and "1 pending migration(s)" in out


def test_small_table_threshold_is_a_setting(big_and_small, tree, settings):
    settings.NIXMIG = {**settings.NIXMIG, "LINT_SMALL_TABLE_ROWS": 50}
    tree.pair("app/002_indexes", "CREATE INDEX small_v_idx ON small (v);\n", None)
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    assert rc == 1 and "error [create-index-not-concurrently]" in out


def test_breaking_findings_are_not_downgraded_on_small_tables(big_and_small, tree):
    tree.pair("app/002_drop", "ALTER TABLE small DROP COLUMN v;\n", None)
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    assert rc == 1 and "error [drop-column]" in out


def test_server_facts_clear_set_not_null_and_varchar_widening(big_and_small, tree):
    big_and_small.sql("ALTER TABLE big ADD CONSTRAINT v_nn CHECK (v IS NOT NULL)")  # validated already
    tree.pair(
        "app/002_tighten",
        "ALTER TABLE big ALTER COLUMN v SET NOT NULL;\nALTER TABLE big ALTER COLUMN s TYPE varchar(40);\n",
        None,
    )
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    assert (out, rc) == (
        f"No findings in 1 pending migration(s) of database '{big_and_small.alias}', one plan over its catalog.\n",
        0,
    ), err
    tree.pair("app/003_narrow", "ALTER TABLE big ALTER COLUMN s TYPE varchar(10);\n", None)
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    assert rc == 1 and "error [alter-column-type]" in out


def test_the_servers_version_is_used_without_pg_version(big_and_small, tree):
    tree.pair("app/002_plan", "ALTER TABLE big ADD COLUMN plan text NOT NULL DEFAULT 'free';\n", None)
    out, err, rc = lint_db(big_and_small, dir=str(tree))
    major = big_and_small.connection.pg_version // 10000
    assert rc == 0 and out.startswith("No findings"), out
    out, err, rc = lint_db(big_and_small, "--pg-version", "10", dir=str(tree))
    assert rc == 1 and "[add-column-volatile-default]" in out
    assert major >= 11


def test_up_refuses_a_plan_with_lint_errors_listing_all_and_runs_nothing(big_and_small, tree):
    tree.pair("app/002_bio", "ALTER TABLE big ADD COLUMN bio text;\n", None)
    tree.pair("app/003_index", "CREATE INDEX big_v_idx ON big (v);\n", None)
    tree.pair("app/004_drop", "ALTER TABLE big DROP COLUMN s;\n", None)
    out, err, rc = big_and_small.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "Nothing was run: lint found 2 error(s)" in err
    assert "app/003_index_up.sql:1:1: error [create-index-not-concurrently]" in err
    assert "app/004_drop_up.sql:1:1: error [drop-column]" in err and "--no-lint" in err
    assert "Traceback" not in err
    assert big_and_small.records() == [("app", "001_tables")]  # not even the harmless 002 ran
    assert (
        big_and_small.value("SELECT count(*) FROM information_schema.columns WHERE column_name = 'bio'") == 0
    )


def test_up_with_no_lint_runs_and_says_lint_was_skipped(big_and_small, tree):
    tree.pair("app/002_index", "CREATE INDEX big_v_idx ON big (v);\n", None)
    out, err, rc = big_and_small.run("sqlmigrate_up", "--no-lint", dir=str(tree))
    assert rc == 0, err
    assert out.startswith("Lint skipped (--no-lint)")
    assert big_and_small.records() == [("app", "001_tables"), ("app", "002_index")]


def test_up_fake_and_down_are_not_linted(big_and_small, tree):
    tree.pair("app/002_index", "CREATE INDEX big_v_idx ON big (v);\n", "DROP INDEX big_v_idx;\n")
    out, err, rc = big_and_small.run("sqlmigrate_up", fake=True, dir=str(tree))
    assert rc == 0, err
    big_and_small.sql("CREATE INDEX big_v_idx ON big (v)")
    out, err, rc = big_and_small.run("sqlmigrate_down", dir=str(tree))  # DROP INDEX without CONCURRENTLY
    assert rc == 0, err
    assert big_and_small.records() == [("app", "001_tables")]


def test_up_prints_a_line_about_lint_warnings_and_runs(big_and_small, tree):
    tree.pair("app/002_nullable", "ALTER TABLE big ALTER COLUMN v DROP NOT NULL;\n", None)
    out, err, rc = big_and_small.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert "Lint: 1 finding(s) in 1 file(s): 0 error(s), 1 warning(s), 0 info, none blocking" in err


def test_api_runs_can_skip_lint_in_a_block(big_and_small, tree):
    from nixmig import api
    from nixmig.exceptions import LintError

    tree.pair("app/002_index", "CREATE INDEX big_v_idx ON big (v);\n", None)
    with pytest.raises(LintError):
        api.migrate_up(directory=tree.path, database=big_and_small.alias)
    with lint.skipped():
        assert api.migrate_up(directory=tree.path, database=big_and_small.alias).ids == ["app/002_index"]


def test_status_counts_the_findings_of_pending_migrations(big_and_small, tree):
    tree.pair(
        "app/002_index", "CREATE INDEX big_v_idx ON big (v);\nCREATE INDEX small_v_idx ON small (v);\n", None
    )
    out, err, rc = big_and_small.run("sqlmigrate_status", dir=str(tree))
    assert rc == 0, err
    lines = out.splitlines()
    note = "Lint: 1 error, 1 info in the pending migrations; 'python manage.py sqlmigrate_lint' shows them."
    assert note in lines and lines.index(note) < len(lines) - 1  # above the summary line
    out, err, rc = big_and_small.run("sqlmigrate_status", json=True, dir=str(tree))
    assert json.loads(out)["lint"] == {
        "error": 1,
        "warning": 0,
        "info": 1,
        "migrations": {"app/002_index": {"error": 1, "warning": 0, "info": 1}},
    }


def test_status_without_pending_migrations_does_not_import_the_parser(big_and_small, tree):
    code = (
        "import sys; from django.core.management import call_command; "
        f"call_command('sqlmigrate_status', dir={str(tree.path)!r}, json=True); "
        "print('pglast' in sys.modules)"
    )
    done = big_and_small.manage("shell", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False"), done.stdout
    assert '"lint": {' in done.stdout and '"error": 0' in done.stdout


@pytest.mark.django_db
def test_admin_pending_list_shows_lint_counts(admin_client, tree, settings):
    from django.db import connection

    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE lint_admin_t (id int)")
        cursor.execute("INSERT INTO lint_admin_t VALUES (1)")
        cursor.execute("ANALYZE lint_admin_t")
    tree.pair("app/001_index", "CREATE INDEX lint_admin_idx ON lint_admin_t (id);\n", None)
    tree.pair("app/002_ok", "CREATE TABLE lint_admin_u (id int);\n", None)
    html = admin_client.get("/admin/nixmig/migrationrecord/").content.decode()
    assert 'id="nixmig-lint"' in html and "Lint of the pending" in html
    assert "<li><code>app/001_index</code>: 1 info</li>" in html  # a small table: downgraded
    assert "app/002_ok</code>:" not in html


# -- the parse-free fast path for CREATE TABLE / CREATE INDEX gives the same answers -----------------


def test_fast_path_folds_names_like_postgresql():
    assert rules('CREATE TABLE "Orders" (id int);\nCREATE INDEX orders_idx ON "Orders" (id);') == []
    assert rules("CREATE TABLE Orders (id int);\nCREATE INDEX orders_idx ON ORDERS (id);") == []
    assert rules('CREATE TABLE "Orders" (id int);\nCREATE INDEX orders_idx ON orders (id);') == [
        "create-index-not-concurrently"
    ]  # "Orders" and orders are two tables
    assert rules("CREATE TABLE app.orders (id int);\nCREATE INDEX ON app . orders (id);") == []
    assert rules("CREATE TABLE app.orders (id int);\nCREATE INDEX ON other.orders (id);") == [
        "create-index-not-concurrently"
    ]


def test_fast_path_keeps_what_later_statements_need():
    created = "CREATE TABLE orders (id int, note varchar(20), total int NOT NULL);"
    assert (
        rules(
            created,
            "ALTER TABLE orders ALTER COLUMN note TYPE varchar(40);\n"
            "ALTER TABLE orders ALTER COLUMN total SET NOT NULL;",
            separate=True,
        )
        == []
    )
    assert rules(created, "ALTER TABLE orders ALTER COLUMN note TYPE int USING 0;", separate=True) == [
        "alter-column-type"
    ]
    assert rules(
        "CREATE TABLE t (id int);\nCREATE INDEX t_idx ON t (id);", "DROP INDEX t_idx;", separate=True
    ) == ["drop-index-not-concurrently"]
    (found,) = run(
        "CREATE TABLE t (id int);\nCREATE INDEX t_idx ON t (id);", "DROP INDEX t_idx;", separate=True
    )
    assert found.table == "t"


def test_fast_path_still_reports_no_transaction_rules():
    assert rules(NO_TX + "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY t_idx ON t (id);") == [
        "create-without-if-not-exists"
    ]  # CREATE TABLE commits with its progress row; only CONCURRENTLY can't
    assert rules("CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY t_idx ON t (id);") == [
        "concurrently-in-transaction"
    ]


def test_lint_all_with_a_database_sizes_the_tables(big_and_small, tree):
    tree.pair("app/002_index", "CREATE INDEX small_v_idx ON small (v);\n", None)
    out, err, rc = lint_db(big_and_small, "--all", dir=str(tree))
    assert rc == 0, out + err
    assert "app/002_index_up.sql:1:1: info [create-index-not-concurrently]" in out and "tables sized" in out
    out, err, rc = call("--all", dir=str(tree))  # without a database: the table may be big
    assert rc == 1 and "error [create-index-not-concurrently]" in out


def test_a_connection_lost_while_sizing_tables_is_one_clear_error(big_and_small):
    from nixmig.exceptions import DatabaseUnavailable

    connection = big_and_small.connection
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = big_and_small.connection.__class__(dict(big_and_small.settings), alias="lint_killer")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    with pytest.raises(DatabaseUnavailable, match="Lint could not read the database's catalog .* --no-lint"):
        lint.read_catalog(connection)
    connection.close()
