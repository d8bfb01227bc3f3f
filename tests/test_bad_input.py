"""Bad input, tried: each case either works, or is refused before anything runs with a
message that names the file and the fix, a non-zero exit code and no traceback."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest


def _run(scratch_db, command: str, tree, *args: str, manage: bool = False) -> tuple[int, str, str]:
    """Run a command in-process (any exception but CommandError fails the test) or through manage.py."""
    if manage:
        proc = scratch_db.manage(command, "--dir", str(tree), *args)
        assert "Traceback" not in proc.stderr
        return proc.returncode, proc.stdout, proc.stderr
    options = {a.lstrip("-").replace("-", "_"): True for a in args}
    out, err, rc = scratch_db.run(command, dir=str(tree), **options)
    return rc, out, err


def _cmd(scratch_db, command: str, *args: str, manage: bool = False) -> SimpleNamespace:
    """``manage.py command --dir X ...`` in-process, or as a subprocess with ``manage=True``."""
    if manage:
        proc = scratch_db.manage(command, *args)
        assert "Traceback" not in proc.stderr
        return proc
    options = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--dir":
            options["dir"] = rest.pop(0)
        elif arg.startswith("-v"):
            options["verbosity"] = int(arg[2:])
        else:
            options[arg.lstrip("-").replace("-", "_")] = True
    out, err, rc = scratch_db.run(command, **options)
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def _refused(scratch_db, tree, *needles: str, command: str = "sqlmigrate_up", manage: bool = False) -> str:
    """Run ``command``; assert it was refused with a message containing ``needles`` and changed nothing."""
    rc, out, err = _run(scratch_db, command, tree, manage=manage)
    assert rc != 0, out
    if manage:
        assert err.startswith("CommandError: "), err
    for needle in needles:
        assert needle in err
    tables = scratch_db.tables()
    assert not (tables - {"migrations"}), "something ran"
    assert "migrations" not in tables or scratch_db.records() == []
    return err


def test_non_utf8_file_is_refused_naming_file_line_and_fix(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.write(
        "auth/002_names_up.sql", raw=b"CREATE TABLE names (n text);\nINSERT INTO names VALUES ('Jos\xe9');\n"
    )
    _refused(
        scratch_db,
        tree,
        "auth/002_names_up.sql:2: is not valid UTF-8 (byte 0xe9",
        "re-save the file as UTF-8",
        manage=True,
    )


def test_utf16_file_is_refused_as_nul_bytes(scratch_db, tree):
    tree.write("auth/001_users_up.sql", raw="CREATE TABLE users (id int);\n".encode("utf-16"))
    _refused(
        scratch_db,
        tree,
        "auth/001_users_up.sql:1: contains a NUL byte",
        "probably binary or UTF-16: save it as UTF-8 text",
    )


def test_nul_byte_in_the_middle_is_refused_with_its_line(scratch_db, tree):
    tree.write("auth/001_users_up.sql", raw=b"CREATE TABLE users (id int);\n\nSELECT 1;\x00\n")
    _refused(scratch_db, tree, "auth/001_users_up.sql:3: contains a NUL byte")


@pytest.mark.parametrize("content", ["", "\n\n   \n", "\ufeff\r\n"])
def test_empty_up_file_is_refused(scratch_db, tree, content):
    tree.table_pair("auth/001_users", "users")
    tree.write("auth/002_nothing_up.sql", raw=content.encode())
    _refused(
        scratch_db, tree, "auth/002_nothing_up.sql: is empty; write the migration's SQL, or delete the file"
    )


def test_up_file_with_only_comments_is_refused(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.write("auth/002_todo_up.sql", "-- auth/002_todo: up\n/* fill me in; */\n")
    _refused(
        scratch_db,
        tree,
        "auth/002_todo_up.sql: has no SQL statement, only comments",
        "write the migration's SQL, or delete the file",
    )


def test_empty_down_file_is_an_explicit_no_op(scratch_db, tree):
    tree.pair("auth/001_users", "CREATE TABLE users (id int);\n", "")
    assert _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree)).returncode == 0
    proc = _cmd(scratch_db, "sqlmigrate_down", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [] and "users" in scratch_db.tables()


def test_symlink_pointing_outside_the_migrations_directory_is_refused(scratch_db, tree, tmp_path):
    outside = tmp_path / "elsewhere.sql"
    outside.write_text("DROP TABLE everything;\n")
    tree.table_pair("auth/001_users", "users")
    (tree.path / "auth" / "002_sneaky_up.sql").symlink_to(outside)
    _refused(
        scratch_db,
        tree,
        f"auth/002_sneaky_up.sql: is a symbolic link to {outside}, outside the migrations directory",
        "copy the file in instead",
        manage=True,
    )


def test_symlink_inside_the_migrations_directory_works(scratch_db, tree):
    tree.write("shared/create_users.sql.txt", "CREATE TABLE users (id int);\n")
    tree.write("auth/001_users_down.sql", "DROP TABLE users;\n")
    (tree.path / "auth" / "001_users_up.sql").symlink_to(tree.path / "shared" / "create_users.sql.txt")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("auth", "001_users")]


def test_symlinked_module_folder_is_refused(scratch_db, tree, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "001_x_up.sql").write_text("CREATE TABLE x (id int);\n")
    tree.table_pair("auth/001_users", "users")
    os.symlink(tmp_path / "other", tree.path / "linked")
    _refused(
        scratch_db,
        tree,
        "linked/: is a symbolic link to a folder",
        "Move the module folder into the migrations directory",
    )


def test_broken_symlink_is_refused(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    (tree.path / "auth" / "002_gone_up.sql").symlink_to(tree.path / "auth" / "nowhere.sql")
    _refused(scratch_db, tree, "auth/002_gone_up.sql: is a broken symbolic link; remove it or fix its target")


@pytest.mark.parametrize("folder", ["...", "my module", "-rf", "auth/sub dir"])
def test_module_folder_with_a_dots_only_or_spaced_name_is_refused(scratch_db, tree, folder):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair(f"{folder}/002_evil", "evil")
    _refused(
        scratch_db,
        tree,
        f"{folder}/: is not a valid module folder name",
        "rename the folder",
        manage=folder == "...",
    )


def test_hidden_folders_and_editor_backups_are_ignored(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.write(".git/001_x_up.sql", "this is not SQL")
    tree.write("auth/001_users_up.sql~", "this is not SQL")
    tree.write("auth/.001_users_up.sql.swp", "this is not SQL")
    tree.write("auth/README.md", "# notes")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("auth", "001_users")]


def test_badly_named_file_is_refused(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.write("auth/add_roles_up.sql", "CREATE TABLE roles (id int);\n")
    _refused(
        scratch_db, tree, "auth/add_roles_up.sql: the name does not follow <NNN>_<name>_up.sql", "rename it"
    )


def test_unknown_directive_is_refused(scratch_db, tree):
    tree.write("auth/001_users_up.sql", "-- nixmig:no-transactions\nCREATE TABLE users (id int);\n")
    _refused(scratch_db, tree, "auth/001_users_up.sql:1: unknown directive 'nixmig:no-transactions'")


@pytest.mark.parametrize(
    "text, line, what",
    [
        (
            "CREATE TABLE broken (id int);\nINSERT INTO broken VALUES ('oops);\n",
            2,
            "unterminated quoted string",
        ),
        ("CREATE TABLE broken (id int);\n/* a comment\nthat never ends;\n", 2, "unterminated /* comment"),
        ("DO $$\nBEGIN\n  PERFORM 1;\nEND;\n", 1, "unterminated dollar-quoted string"),
    ],
)
def test_unterminated_quote_or_comment_is_refused_before_anything_runs(scratch_db, tree, text, line, what):
    tree.table_pair("auth/001_users", "users")
    tree.write("auth/002_broken_up.sql", text)
    _refused(scratch_db, tree, f"auth/002_broken_up.sql:{line}: {what}", "Close the quote", manage=line == 2)


def test_twenty_megabyte_file_works(scratch_db, tree):
    rows = ", ".join(f"({i}, '{'x' * 90}')" for i in range(1000))
    statement = f"INSERT INTO big_t (id, payload) VALUES {rows};\n"
    count = 20 * 1024 * 1024 // len(statement) + 1
    path = tree.write(
        "data/001_big_up.sql", "CREATE TABLE big_t (id int, payload text);\n" + statement * count
    )
    tree.write("data/001_big_down.sql", "DROP TABLE big_t;\n")
    assert path.stat().st_size >= 20 * 1024 * 1024
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.value("SELECT count(*) FROM big_t") == count * 1000
    assert scratch_db.records() == [("data", "001_big")]


def test_ten_thousand_files_work(scratch_db, tree):
    modules = [f"mod{m:02d}" for m in range(20)]
    for n in range(1, 5001):
        folder = tree.path / modules[n % 20]
        folder.mkdir(exist_ok=True)
        (folder / f"{n:05d}_step_up.sql").write_text(
            f"CREATE TABLE t{n} (id int);\n" if n % 500 == 0 else f"COMMENT ON SCHEMA public IS 'step {n}';\n"
        )
        (folder / f"{n:05d}_step_down.sql").write_text(f"DROP TABLE t{n};\n" if n % 500 == 0 else "")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    assert rc == 0, err
    assert json.loads(out)["summary"]["pending"] == 5000
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    assert scratch_db.value("SELECT count(*) FROM migrations") == 5000
    assert scratch_db.value("SELECT obj_description('public'::regnamespace)") == "step 4999"
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), check=True)
    assert rc == 0, err


# -- a tracking table someone altered by hand -----------------------------------------------


def _applied(scratch_db, tree) -> None:
    tree.table_pair("auth/001_users", "users")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    tree.table_pair("auth/002_roles", "roles")


@pytest.mark.parametrize("command", ["sqlmigrate_up", "sqlmigrate_status", "sqlmigrate_down"])
def test_tracking_table_without_a_required_column_is_refused(scratch_db, tree, command):
    _applied(scratch_db, tree)
    scratch_db.sql("ALTER TABLE migrations DROP COLUMN applied_at")
    proc = _cmd(scratch_db, command, "--dir", str(tree), manage=command == "sqlmigrate_up")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "The tracking table migrations has no column(s) applied_at" in proc.stderr
    assert "Restore the columns id, name and applied_at, or set NIXMIG['TABLE']" in proc.stderr
    assert "roles" not in scratch_db.tables() and "users" in scratch_db.tables()


def test_tracking_table_without_nixmig_columns_is_upgraded_in_place(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("ALTER TABLE migrations DROP COLUMN checksum, DROP COLUMN execution_ms")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("auth", "001_users"), ("auth", "002_roles")]
    assert scratch_db.value("SELECT count(*) FROM migrations WHERE checksum IS NOT NULL") >= 1


def test_tracking_table_with_a_duplicated_row_is_refused_with_the_delete_to_run(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql(
        "DROP INDEX migrations_module_name_key; "
        "INSERT INTO migrations (name, module, applied_at) VALUES ('001_users', 'auth', now())"
    )
    row = scratch_db.value("SELECT max(id) FROM migrations")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "records auth/001_users twice" in proc.stderr
    assert f'DELETE FROM "migrations" WHERE id = {row};' in proc.stderr
    assert "roles" not in scratch_db.tables()


def test_tracking_table_with_a_retyped_column_still_reads_when_the_values_convert(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("ALTER TABLE migrations ALTER COLUMN applied_at TYPE text USING applied_at::text")
    for args in (("sqlmigrate_status", "--json"), ("sqlmigrate_status", "-v2"), ("sqlmigrate_up",)):
        proc = _cmd(scratch_db, *args, "--dir", str(tree))
        assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == [("auth", "001_users"), ("auth", "002_roles")]


def test_tracking_table_with_values_that_dont_convert_is_refused(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("ALTER TABLE migrations ALTER COLUMN applied_at TYPE text USING 'yesterday-ish'")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "The tracking table migrations can't be read" in proc.stderr
    assert "Its columns must be id BIGINT, name VARCHAR, applied_at TIMESTAMPTZ" in proc.stderr
    assert "roles" not in scratch_db.tables()


def test_tracking_table_whose_id_lost_its_default_fails_the_migration_cleanly(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("ALTER TABLE migrations ALTER COLUMN id DROP DEFAULT")
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Applying auth/002_roles failed" in proc.stderr and '"id"' in proc.stderr
    assert "roles" not in scratch_db.tables()  # the record failed, so the migration was rolled back
    assert scratch_db.records() == [("auth", "001_users")]


def test_tracking_table_replaced_by_a_view_is_refused(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql(
        "ALTER TABLE migrations RENAME TO migrations_old; "
        "CREATE VIEW migrations AS SELECT id, name, applied_at FROM migrations_old"
    )
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree), manage=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "Can't create or upgrade the tracking table migrations" in proc.stderr
        and "replaced by a view" in proc.stderr
    )
    assert "roles" not in scratch_db.tables()


def test_tracking_table_edited_checksum_shows_as_changed_and_repair_fixes_it(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("UPDATE migrations SET checksum = 'garbage'")
    _refused_status = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert _refused_status.returncode == 1 and "were edited after they were applied" in _refused_status.stderr
    assert _cmd(scratch_db, "sqlmigrate_repair", "--dir", str(tree)).returncode == 0
    assert _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree)).returncode == 0
    assert scratch_db.records() == [("auth", "001_users"), ("auth", "002_roles")]


def test_record_of_a_deleted_file_shows_as_missing_and_does_not_block_up(scratch_db, tree):
    _applied(scratch_db, tree)
    scratch_db.sql("INSERT INTO migrations (name, module, applied_at) VALUES ('000_ghost', 'auth', now())")
    status = _cmd(scratch_db, "sqlmigrate_status", "--dir", str(tree))
    assert " [?] 000_ghost" in status.stdout
    proc = _cmd(scratch_db, "sqlmigrate_up", "--dir", str(tree))
    assert proc.returncode == 0, proc.stderr
