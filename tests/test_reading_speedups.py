"""What issue 13's speed-ups must not change: down files read only when used (with the same
errors), big files analysed in pieces with the same result, one migration read alone as the
whole tree reads it."""

from __future__ import annotations

import pytest

from nixmig import sqltext
from nixmig.exceptions import TreeError
from nixmig.tree import load_migration, load_tree

TRICKY = (
    "CREATE TABLE t (id int, note text DEFAULT 'a;b');\n"
    "-- a comment; with semicolons;\n"
    "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN PERFORM 1; RETURN NEW; END $body$;\n"
    "/* a block; comment */ INSERT INTO t VALUES (1, 'é;ü');;\n"
    "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (2); INSERT INTO t VALUES (3); END;\n"
    "BEGIN;\nCREATE INDEX CONCURRENTLY t_idx ON t (id);\nCOMMIT;\nVACUUM t;\nSELECT E'x\\';y'"
)


def _key(analysis):
    return (
        [
            (s.start, s.end, s.line, s.kind, s.no_transaction, s.transaction_control, s.builds_index)
            for s in analysis.statements
        ],
        analysis.parsed,
        analysis.parse_error,
        analysis.unscannable_line,
    )


@pytest.mark.parametrize(
    "text", [TRICKY, TRICKY * 3, "SELECT 1; SELEC 2; SELECT 3;", "SELECT 1; SELECT 'open"]
)
def test_a_file_analysed_in_pieces_gives_the_statements_of_one_parse(monkeypatch, text):
    whole = _key(sqltext._analyze_whole(text))
    assert whole[0], "the sample has statements"
    for size in (1, 5, 17, 40, 101):
        monkeypatch.setattr(sqltext, "CHUNK_CHARS", size)
        assert _key(sqltext.analyze(text)) == whole, size


def test_down_files_are_read_only_when_used_and_fail_as_load_tree_did(tree):
    tree.write("auth/001_users_up.sql", "CREATE TABLE users (id int);\n")
    tree.write("auth/001_users_down.sql", raw=b"DROP TABLE users;\x00\n")
    loaded = load_tree(tree.path)
    assert [p.code for p in loaded.errors] == []
    down = loaded.migrations[0].down
    assert not down.is_loaded
    with pytest.raises(TreeError, match=r"^auth/001_users_down.sql:1: contains a NUL byte"):
        _ = down.text
    prepared, reasons = sqltext.examine(down)
    assert prepared is None and reasons[0].startswith("auth/001_users_down.sql:1: contains a NUL byte")


def test_a_good_down_file_reads_the_same_as_before(tree):
    tree.pair(
        "auth/001_users",
        "CREATE TABLE users (id int);\n",
        "-- nixmig:lock-timeout=5s\r\nDROP TABLE users;\r\n",
    )
    down = load_tree(tree.path).migrations[0].down
    assert down.text == "-- nixmig:lock-timeout=5s\nDROP TABLE users;\n"
    assert down.directives.lock_timeout == "5s" and down.is_loaded and not down.is_empty


def test_one_migration_read_alone_equals_the_one_in_the_tree(tree):
    tree.pair("auth/001_users", "CREATE TABLE users (id int);\n", "DROP TABLE users;\n")
    tree.pair("integrations/github/002_hooks", "CREATE TABLE hooks (id int);\n", None)
    tree.pair(".hidden/003_x", "SELECT 1;\n")
    loaded = load_tree(tree.path)
    for m in loaded.migrations:
        alone = load_migration(tree.path, m.module, m.name)
        assert (alone.module, alone.number, alone.name, alone.up, alone.down) == (
            m.module,
            m.number,
            m.name,
            m.up,
            m.down,
        )
    assert load_migration(tree.path, ".hidden", "003_x") is None  # load_tree skips hidden folders
    assert load_migration(tree.path, "auth", "009_missing") is None


@pytest.mark.django_db(transaction=True)
def test_a_bad_down_file_is_a_status_warning_and_refuses_only_the_rollback(scratch_db, tree):
    tree.write("auth/001_users_up.sql", "CREATE TABLE users (id int);\n")
    tree.write("auth/001_users_down.sql", raw=b"DROP TABLE users;\x00\n")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert rc == 0, err
    assert "  warning: auth/001_users_down.sql:1: contains a NUL byte" in out
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 1 and "auth/001_users_down.sql:1: contains a NUL byte" in err and "Nothing was run" in err
    assert scratch_db.records() == [("auth", "001_users")] and "users" in scratch_db.tables()
