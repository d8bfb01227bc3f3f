"""The pure core: reading trees, planning and classifying SQL. No database, no settings."""

from datetime import UTC, datetime

import pytest

from nixmig.exceptions import PlanError, TreeError
from nixmig.plan import AppliedRecord, plan_down, plan_up, resolve
from nixmig.sqltext import analyze, blank_out, prepare
from nixmig.tree import checksum, load_tree

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(row_id, module, name, checksum=None):
    return AppliedRecord(row_id, name, module, T0, checksum)


# -- the tree ------------------------------------------------------------------------------


def test_ids_are_module_slash_name_and_nested_modules_keep_their_path(tree):
    tree.table_pair("auth/001_create_users", "users")
    tree.table_pair("integrations/github/006_create_github_connector", "gh")
    t = load_tree(tree.path)
    assert [m.id for m in t.migrations] == [
        "auth/001_create_users",
        "integrations/github/006_create_github_connector",
    ]
    assert t.migrations[1].module == "integrations/github"
    assert t.migrations[1].name == "006_create_github_connector"


def test_order_is_number_as_integer_then_module_then_name_across_modules(tree):
    for mid in ["b/10_x", "a/9_z", "b/002_a", "a/002_b", "c/002_a", "a/1_late"]:
        tree.table_pair(mid, "t")
    t = load_tree(tree.path)
    assert [m.id for m in t.migrations] == ["a/1_late", "a/002_b", "b/002_a", "c/002_a", "a/9_z", "b/10_x"]


def test_same_name_in_two_modules_is_two_migrations(tree):
    tree.table_pair("auth/001_init", "a")
    tree.table_pair("users/001_init", "b")
    assert [m.id for m in load_tree(tree.path).migrations] == ["auth/001_init", "users/001_init"]


def test_non_sql_hidden_and_backup_files_are_ignored(tree):
    tree.table_pair("auth/001_create_users", "users")
    for name in [
        "README.md",
        "auth/notes.txt",
        "auth/.001_x_up.sql",
        "auth/001_create_users_up.sql~",
        "auth/#001_create_users_up.sql#",
        "auth/.001_create_users_up.sql.swp",
        ".hidden/001_a_up.sql",
    ]:
        tree.write(name, "garbage")
    t = load_tree(tree.path)
    assert [m.id for m in t.migrations] == ["auth/001_create_users"]
    assert t.problems == ()


def test_a_sql_file_with_a_bad_name_is_an_error_naming_the_file(tree):
    tree.table_pair("auth/001_create_users", "users")
    tree.write("auth/create_roles.sql", "SELECT 1;")
    t = load_tree(tree.path)
    assert [p.file for p in t.errors] == ["auth/create_roles.sql"]
    with pytest.raises(TreeError, match=r"auth/create_roles\.sql: the name does not follow"):
        t.raise_for_errors()


def test_orphan_down_is_a_warning_and_missing_down_makes_a_migration_irreversible(tree):
    tree.pair("auth/001_create_users", "CREATE TABLE users ();", down=None)
    tree.write("auth/002_create_tokens_down.sql", "DROP TABLE tokens;")
    t = load_tree(tree.path)
    assert not t.migrations[0].reversible
    levels = {(p.code, p.level, p.file) for p in t.problems}
    assert levels == {
        ("orphan_down", "warning", "auth/002_create_tokens_down.sql"),
        ("irreversible", "info", "auth/001_create_users_up.sql"),
    }
    t.raise_for_errors()  # neither is an error


def test_an_empty_down_file_is_a_reversible_no_op(tree):
    tree.pair("auth/001_x", "SELECT 1;", down="")
    m = load_tree(tree.path).migrations[0]
    assert m.reversible and m.down.is_empty


def test_checksum_ignores_line_endings_and_bom():
    lf = b"CREATE TABLE a ();\nSELECT 1;\n"
    assert checksum(lf) == checksum(lf.replace(b"\n", b"\r\n")) == checksum(b"\xef\xbb\xbf" + lf)
    assert checksum(lf) != checksum(lf + b"SELECT 2;\n")


def test_directives_are_read_from_the_leading_comment_lines(tree):
    tree.write(
        "a/001_x_up.sql",
        "-- adds an index\n-- nixmig:no-transaction\n-- nixmig:lock-timeout=5s\n"
        "CREATE INDEX CONCURRENTLY i ON t (x);\n-- nixmig:statement-timeout=1s\n",
    )
    d = load_tree(tree.path).migrations[0].up.directives
    assert d.no_transaction and d.lock_timeout == "5s" and d.statement_timeout is None


def test_an_unknown_directive_is_an_error_with_file_and_line(tree):
    tree.write("a/001_x_up.sql", "-- nixmig:no-transactoin\nSELECT 1;\n")
    [problem] = load_tree(tree.path).errors
    assert problem.message.startswith("a/001_x_up.sql:1: unknown directive 'nixmig:no-transactoin'")


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(
        TreeError, match="does not exist; create it, set NIXMIG\\['MIGRATIONS_DIR'\\], or pass --dir"
    ):
        load_tree(tmp_path / "nope")


# -- planning ------------------------------------------------------------------------------


@pytest.fixture
def three(tree):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("orgs/002_orgs", "orgs")
    tree.pair("auth/003_tokens", "CREATE TABLE tokens ();", down=None)
    return load_tree(tree.path)


def test_states_applied_pending_changed_and_missing(three):
    m = three.migrations
    status = resolve(
        three,
        [
            record(1, "auth", "001_users", m[0].checksum),
            record(2, "orgs", "002_orgs", "edited"),
            record(3, "gone", "000_old"),
        ],
    )
    assert [(e.id, e.state) for e in status.entries] == [
        ("gone/000_old", "missing"),
        ("auth/001_users", "applied"),
        ("orgs/002_orgs", "changed"),
        ("auth/003_tokens", "pending"),
    ]
    assert not status.ok


def test_pending_before_the_latest_applied_is_out_of_order_and_refused_without_the_flag(three):
    status = resolve(three, [record(1, "auth", "001_users"), record(2, "auth", "003_tokens")])
    assert [e.id for e in status.out_of_order] == ["orgs/002_orgs"]
    with pytest.raises(PlanError, match="out of order"):
        plan_up(status)
    assert [e.id for e in plan_up(status, allow_out_of_order=True)] == ["orgs/002_orgs"]


def test_plan_up_to_stops_after_that_migration(three):
    status = resolve(three, [])
    assert [e.id for e in plan_up(status, to="orgs/002_orgs")] == ["auth/001_users", "orgs/002_orgs"]
    with pytest.raises(PlanError, match="There is no migration 'orgs/999'"):
        plan_up(status, to="orgs/999")


def test_plan_down_follows_application_order_not_file_order(three):
    status = resolve(three, [record(5, "orgs", "002_orgs"), record(9, "auth", "001_users")])
    assert [e.id for e in plan_down(status)] == ["auth/001_users"]
    assert [e.id for e in plan_down(status, steps=2)] == ["auth/001_users", "orgs/002_orgs"]
    assert [e.id for e in plan_down(status, to="orgs/002_orgs")] == ["auth/001_users"]


def test_plan_down_refuses_an_irreversible_migration_before_anything(three):
    status = resolve(three, [record(1, "auth", "001_users"), record(2, "auth", "003_tokens")])
    with pytest.raises(
        PlanError,
        match=r"Nothing can be rolled back: the most recently applied migration, "
        r"auth/003_tokens, is irreversible .*Nothing was rolled back",
    ):
        plan_down(status, steps=2)
    status = resolve(three, [record(1, "auth", "003_tokens"), record(2, "auth", "001_users")])
    with pytest.raises(
        PlanError,
        match=r"auth/003_tokens is irreversible: it has no down file .*Roll back at "
        r"most 1 step\(s\) \(--steps 1\)",
    ):
        plan_down(status, steps=2)
    status = resolve(three, [record(1, "auth", "001_users"), record(2, "auth", "003_tokens")])
    assert [e.id for e in plan_down(status, steps=2, fake=True)] == ["auth/003_tokens", "auth/001_users"]


def test_bare_go_names_match_their_file_and_ambiguous_ones_are_errors(tree):
    tree.table_pair("auth/001_init", "a")
    tree.table_pair("users/001_init", "b")
    tree.table_pair("orgs/002_orgs", "c")
    t = load_tree(tree.path)
    status = resolve(t, [record(1, None, "002_orgs")])
    assert [(e.id, e.state) for e in status.entries if e.record] == [("orgs/002_orgs", "applied")]
    assert [(r.row_id, m.id) for r, m in status.legacy] == [(1, "orgs/002_orgs")]
    status = resolve(t, [record(1, None, "001_init")])
    assert [p.code for p in status.errors] == ["ambiguous_record"]


# -- statements ----------------------------------------------------------------------------


def test_begin_inside_a_plpgsql_body_is_not_transaction_control():
    sql = (
        "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN COMMIT; RETURN NEW; END; $$ LANGUAGE plpgsql;\n"
        "SELECT 'BEGIN; COMMIT;';\n"
    )
    a = analyze(sql)
    assert a.parsed and len(a.statements) == 2 and a.transaction_control == ()


def test_statements_that_cant_run_in_a_transaction_are_named_with_their_line():
    sql = "SELECT 'é';\nCREATE INDEX CONCURRENTLY i ON t (x);\nVACUUM t;\nANALYZE t;\nDROP INDEX CONCURRENTLY i;\n"
    found = [(s.line, s.no_transaction) for s in analyze(sql).no_transaction]
    assert found == [(2, "CREATE INDEX CONCURRENTLY"), (3, "VACUUM"), (5, "DROP INDEX CONCURRENTLY")]


def test_statement_offsets_are_characters_even_after_non_ascii_text():
    sql = "-- café ☕\nSELECT 'naïve';\n/* c */ SELECT 2;"
    a = analyze(sql)
    assert [sql[s.start : s.end] for s in a.statements] == ["SELECT 'naïve'", "SELECT 2"]
    assert [s.line for s in a.statements] == [2, 3]


def test_blanking_own_begin_commit_keeps_the_line_numbers():
    sql = "BEGIN;\nCREATE TABLE a ();\nCOMMIT;\n"
    a = analyze(sql)
    body = blank_out(sql, a.transaction_control)
    assert body.count("\n") == sql.count("\n")
    assert "BEGIN" not in body and "COMMIT" not in body and "CREATE TABLE a ();" in body


def test_unparseable_sql_falls_back_to_the_scanner_and_lets_the_server_judge():
    a = analyze("SELEC 1;\nCREATE INDEX CONCURRENTLY i ON t (x);")
    assert not a.parsed and [s.no_transaction for s in a.statements] == [None, "CREATE INDEX CONCURRENTLY"]


def test_prepare_refuses_concurrently_without_the_directive(tree):
    tree.write("a/001_x_up.sql", "CREATE TABLE t (x int);\n\nCREATE INDEX CONCURRENTLY i ON t (x);\n")
    with pytest.raises(
        TreeError,
        match=r"a/001_x_up.sql:3: CREATE INDEX CONCURRENTLY can't run inside a transaction"
        r".*'-- nixmig:no-transaction'",
    ):
        prepare(load_tree(tree.path).migrations[0].up)


def test_shared_numbers_are_a_warning_naming_both_files(tree):
    tree.table_pair("catalog/007_create_products", "products")
    tree.table_pair("catalog/008_add_weight", "weights")
    tree.table_pair("catalog/008_add_color", "colors")
    t = load_tree(tree.path)
    assert [m.id for m in t.migrations] == [
        "catalog/007_create_products",
        "catalog/008_add_color",
        "catalog/008_add_weight",
    ]
    [problem] = t.problems
    assert (problem.code, problem.level, problem.file) == (
        "duplicate_number",
        "warning",
        "catalog/008_add_color_up.sql",
    )
    assert problem.message == (
        "catalog/008_add_color_up.sql and catalog/008_add_weight_up.sql share the number 008, so they run in "
        "the order of module and name (catalog/008_add_color first), whatever order they were written in. If "
        "they come from two branches, renumber the later one after the highest number (009) with "
        "'python manage.py sqlmigrate_new' and move its SQL there; NIXMIG['UNIQUE_NUMBERS'] = True refuses "
        "shared numbers."
    )
    t.raise_for_errors()  # a warning: the tree still runs


def test_unique_numbers_refuses_shared_numbers(tree):
    tree.table_pair("catalog/008_add_weight", "weights")
    tree.table_pair("shipping/008_add_zones", "zones")
    tree.table_pair("shipping/010_add_rates", "rates")
    t = load_tree(tree.path, unique_numbers=True)
    assert [(p.code, p.level) for p in t.problems] == [("duplicate_number", "error")]
    with pytest.raises(
        TreeError, match=r"catalog/008_add_weight_up\.sql and shipping/008_add_zones_up\.sql share"
    ):
        t.raise_for_errors()
    assert "011" in t.problems[0].message  # the next free number


def test_three_files_sharing_a_number_are_one_warning(tree):
    for module in ("a", "b", "c"):
        tree.table_pair(f"{module}/043_x", f"t_{module}")
    [problem] = load_tree(tree.path).problems
    assert problem.message.startswith(
        "a/043_x_up.sql, b/043_x_up.sql and c/043_x_up.sql share the number 043"
    )
