"""Every command and option of the core issue, on a real PostgreSQL, through call_command and manage.py."""

import io
import json

import pytest
from django.core.management import call_command, get_commands, load_command_class

from nixmig import api


@pytest.fixture
def three(tree):
    tree.table_pair("auth/001_create_users", "users")
    tree.pair(
        "orgs/002_create_orgs",
        "CREATE TABLE orgs (id serial PRIMARY KEY, owner int);\n",
        "DROP TABLE orgs;\n",
    )
    tree.table_pair("auth/003_create_tokens", "tokens")
    return tree


# -- sqlmigrate_up -------------------------------------------------------------------------


def test_up_applies_everything_in_order_with_django_style_lines(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three))
    assert rc == 0, err
    lines = [line for line in out.splitlines() if "Applying" in line]
    assert [line.split("Applying ")[1].split("...")[0] for line in lines] == [
        "auth/001_create_users",
        "orgs/002_create_orgs",
        "auth/003_create_tokens",
    ]
    assert all(line.rstrip().endswith(" ms)") and "... OK (" in line for line in lines)
    assert out.rstrip().splitlines()[-1].startswith("Applied 3 migration(s) in ")
    assert scratch_db.records() == [
        ("auth", "001_create_users"),
        ("orgs", "002_create_orgs"),
        ("auth", "003_create_tokens"),
    ]
    assert {"users", "orgs", "tokens", "migrations"} <= scratch_db.tables()


def test_rerunning_with_nothing_pending_is_a_quiet_success(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three))
    assert (out, err, rc) == ("No migrations to apply.\n", "", 0)
    assert scratch_db.run("sqlmigrate_up", dir=str(three), verbosity=0) == ("", "", 0)


def test_up_to_stops_after_that_migration(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), to="orgs/002_create_orgs")
    assert rc == 0, err
    assert scratch_db.records() == [("auth", "001_create_users"), ("orgs", "002_create_orgs")]


def test_up_plan_lists_ids_in_order_and_changes_nothing(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), plan=True)
    assert rc == 0, err
    assert out == (
        "Planned: apply 3 migration(s), in order:\n  auth/001_create_users\n  orgs/002_create_orgs\n"
        "  auth/003_create_tokens\n"
    )
    assert scratch_db.tables() == set()


def test_up_fake_records_without_running(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), fake=True)
    assert rc == 0, err
    assert "FAKED" in out
    assert len(scratch_db.records()) == 3
    assert scratch_db.tables() == {"migrations"}


def test_atomic_applies_all_or_nothing(scratch_db, three):
    three.pair("auth/004_broken", "CREATE TABLE fine ();\nSELECT * FROM no_such_table;\n", "")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), atomic=True)
    assert rc == 1
    assert "with --atomic so was everything else of this run: nothing of it was applied" in err
    assert scratch_db.records() == []
    assert scratch_db.tables() == {"migrations"}


def test_a_failure_rolls_back_that_migration_keeps_earlier_ones_and_attempts_no_later_one(scratch_db, three):
    three.pair(
        "orgs/002_create_orgs",
        "CREATE TABLE orgs (id serial);\n\nINSERT INTO orgs VALUES (1);\nSELECT nope FROM orgs;\n",
        "DROP TABLE orgs;",
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three))
    assert rc == 1
    path = three.path / "orgs" / "002_create_orgs_up.sql"
    assert (
        f'Applying orgs/002_create_orgs failed at {path} line 4: column "nope" does not exist '
        "(SQLSTATE 42703)" in err
    )
    assert (
        "1 migration(s) applied before it in this run stay so (auth/001_create_users); later ones were not "
        "attempted." in err
    )
    assert out.rstrip().endswith("Applying orgs/002_create_orgs... FAILED")
    assert scratch_db.records() == [("auth", "001_create_users")]
    assert "orgs" not in scratch_db.tables() and "tokens" not in scratch_db.tables()


def test_a_failure_through_manage_py_exits_1_with_no_traceback(scratch_db, three):
    three.write("orgs/002_create_orgs_up.sql", "CREATE TABLE orgs (;\n")
    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(three))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "CommandError: Applying orgs/002_create_orgs failed at" in proc.stderr
    assert 'line 1: syntax error at or near ";" (SQLSTATE 42601)' in proc.stderr


def test_files_are_sent_untouched_percent_dollar_quotes_unicode_and_a_final_comment(scratch_db, tree):
    tree.pair(
        "misc/001_tricky",
        """
        CREATE TABLE notes (body text);
        INSERT INTO notes VALUES ('100% sure, 50%% off, %s and %(x)s stay'), ('naïve café ☕');
        CREATE FUNCTION shout() RETURNS trigger AS $fn$
        BEGIN
            NEW.body := upper(NEW.body); -- ';' inside the body
            RETURN NEW;
        END;
        $fn$ LANGUAGE plpgsql;
        CREATE TRIGGER notes_shout BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION shout();
        INSERT INTO notes VALUES ('quiet');
        -- the end, no newline""".rstrip(),
        "DROP TABLE notes; DROP FUNCTION shout();",
    )
    (tree.path / "misc/001_tricky_up.sql").write_text(
        (tree.path / "misc/001_tricky_up.sql").read_text().rstrip("\n"), encoding="utf-8"
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert [r[0] for r in scratch_db.sql("SELECT body FROM notes ORDER BY body")] == [
        "100% sure, 50%% off, %s and %(x)s stay",
        "QUIET",
        "naïve café ☕",
    ]


def test_the_tracking_table_keeps_go_columns_plus_module_checksum_and_time(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    cols = scratch_db.sql(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'migrations' ORDER BY ordinal_position"
    )
    assert cols == [
        ("id", "bigint"),
        ("name", "character varying"),
        ("applied_at", "timestamp with time zone"),
        ("module", "character varying"),
        ("checksum", "character varying"),
        ("execution_ms", "double precision"),
    ]
    row = scratch_db.sql(
        "SELECT name, module, length(checksum), execution_ms >= 0 FROM migrations ORDER BY id"
    )[0]
    assert row == ("001_create_users", "auth", 64, True)


# -- sqlmigrate_down -----------------------------------------------------------------------


def test_down_rolls_back_the_most_recently_applied_by_application_order(scratch_db, tree):
    tree.table_pair("auth/001_create_users", "users")
    tree.table_pair("auth/003_create_tokens", "tokens")
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    tree.table_pair("orgs/002_create_orgs", "orgs")  # merged later, applied last
    assert scratch_db.run("sqlmigrate_up", dir=str(tree), allow_out_of_order=True)[2] == 0
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 0, err
    assert "Unapplying orgs/002_create_orgs... OK" in out
    assert scratch_db.records() == [("auth", "001_create_users"), ("auth", "003_create_tokens")]
    assert "orgs" not in scratch_db.tables() and "tokens" in scratch_db.tables()


def test_down_steps_to_and_all(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    assert scratch_db.run("sqlmigrate_down", dir=str(three), steps=2)[2] == 0
    assert scratch_db.records() == [("auth", "001_create_users")]
    scratch_db.run("sqlmigrate_up", dir=str(three))
    assert scratch_db.run("sqlmigrate_down", dir=str(three), to="auth/001_create_users")[2] == 0
    assert scratch_db.records() == [("auth", "001_create_users")]
    scratch_db.run("sqlmigrate_up", dir=str(three))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(three), everything=True, interactive=False)
    assert rc == 0, err
    assert out.rstrip().endswith("s.") and "Rolled back 3 migration(s)" in out
    assert scratch_db.tables() == {"migrations"} and scratch_db.records() == []


def test_down_all_asks_for_confirmation_and_refuses_without_a_terminal(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(three), everything=True)
    assert rc == 1 and "--all needs confirmation; pass --noinput" in err
    assert len(scratch_db.records()) == 3
    proc = scratch_db.manage("sqlmigrate_down", "--dir", str(three), "--all", "--noinput")
    assert proc.returncode == 0, proc.stderr
    assert scratch_db.records() == []


def test_down_plan_and_fake(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(three), steps=2, plan=True)
    assert (
        out
        == "Planned: roll back 2 migration(s), in order:\n  auth/003_create_tokens\n  orgs/002_create_orgs\n"
    )
    assert len(scratch_db.records()) == 3
    out, err, rc = scratch_db.run(
        "sqlmigrate_down", dir=str(three), everything=True, fake=True, interactive=False
    )
    assert rc == 0, err
    assert scratch_db.records() == []
    assert {"users", "orgs", "tokens"} <= scratch_db.tables()  # --fake ran no SQL


def test_down_refuses_an_irreversible_migration_naming_it(scratch_db, tree):
    tree.pair("auth/001_create_users", "CREATE TABLE users ();", down=None)
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 1
    assert err.startswith(
        "Nothing can be rolled back: the most recently applied migration, auth/001_create_users, "
        "is irreversible (it has no down file, auth/001_create_users_down.sql). Nothing was rolled "
        "back."
    )
    assert scratch_db.records() == [("auth", "001_create_users")]


def test_an_empty_down_file_is_a_no_op_rollback(scratch_db, tree):
    tree.pair("auth/001_seed", "CREATE TABLE kept ();", down="")
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.records() == [] and "kept" in scratch_db.tables()


# -- sqlmigrate_status ---------------------------------------------------------------------


def test_status_groups_by_module_with_states_and_a_summary(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three), to="orgs/002_create_orgs")
    three.write("auth/009_stray_down.sql", "SELECT 1;")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "auth"
    assert lines[1].startswith(" [X] 001_create_users ") and "applied 20" in lines[1]
    assert lines[2] == " [ ] 003_create_tokens"
    assert lines[3] == "orgs"
    assert lines[4].startswith(" [X] 002_create_orgs ")
    assert lines[5] == "Problems:"
    assert lines[6].startswith("  warning: auth/009_stray_down.sql: matches no up file")
    assert lines[-1] == (
        "3 migration(s): 2 applied, 1 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back."
    )


def test_status_json_lists_migrations_in_run_order_and_problems(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three), to="auth/001_create_users")
    three.write("auth/001_create_users_up.sql", "CREATE TABLE users (id serial PRIMARY KEY, email text);\n")
    three.write("bad/x.sql", "SELECT 1;")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three), json=True)
    data = json.loads(out)
    assert [(m["id"], m["module"], m["name"], m["state"]) for m in data["migrations"]] == [
        ("auth/001_create_users", "auth", "001_create_users", "changed"),
        ("orgs/002_create_orgs", "orgs", "002_create_orgs", "pending"),
        ("auth/003_create_tokens", "auth", "003_create_tokens", "pending"),
    ]
    assert (
        data["migrations"][0]["applied_at"].startswith("20") and data["migrations"][1]["applied_at"] is None
    )
    assert [(p["file"], p["level"]) for p in data["problems"]] == [("bad/x.sql", "error")]


def test_status_shows_missing_files(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    (three.path / "auth/003_create_tokens_up.sql").unlink()
    (three.path / "auth/003_create_tokens_down.sql").unlink()
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three), json=True)
    assert [m["state"] for m in json.loads(out)["migrations"]] == ["applied", "applied", "missing"]


def test_missing_files_of_applied_migrations_are_a_problem_in_status(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three))
    for path in three.path.glob("auth/*.sql"):  # the module's folder moved away: two applied migrations
        path.unlink()
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three))
    assert rc == 0, err
    problems = out[out.index("Problems:\n") :].splitlines()[1:-1]
    assert problems == [
        "  warning: auth/001_create_users is recorded as applied, but its files are gone "
        "(auth/001_create_users_up.sql). Restore them from version control; if the migration was removed "
        "on purpose, its schema changes are still in the database: roll it back first, or delete its "
        "record (DELETE FROM migrations WHERE id = 1;).",
        "  warning: auth/003_create_tokens is recorded as applied, but its files are gone "
        "(auth/003_create_tokens_up.sql). Restore them from version control; if the migration was removed "
        "on purpose, its schema changes are still in the database: roll it back first, or delete its "
        "record (DELETE FROM migrations WHERE id = 3;).",
    ]
    data = json.loads(scratch_db.run("sqlmigrate_status", dir=str(three), json=True)[0])
    assert [(p["code"], p["level"], p.get("file")) for p in data["problems"]] == [
        ("missing_file", "warning", "auth/001_create_users_up.sql"),
        ("missing_file", "warning", "auth/003_create_tokens_up.sql"),
    ]
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three), check=True)
    assert rc == 1 and "2 missing, 0 partly applied, 0 partly rolled back, 2 problem(s)" in err


def test_up_warns_about_missing_files_and_applies_the_rest(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three), to="orgs/002_create_orgs")
    (three.path / "auth/001_create_users_up.sql").unlink()
    (three.path / "auth/001_create_users_down.sql").unlink()
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three))
    assert rc == 0, err
    assert "auth/001_create_users is recorded as applied, but its files are gone" in err
    assert "Applying auth/003_create_tokens... OK" in out
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three))
    assert out == "No migrations to apply.\n"
    assert err.startswith("Warning: auth/001_create_users is recorded as applied, but its files are gone")


@pytest.fixture
def merged(tree):
    """Two branches merged: both added catalog/008."""
    tree.table_pair("catalog/007_create_products", "products")
    tree.table_pair("catalog/008_add_weight", "weights")
    tree.table_pair("catalog/008_add_color", "colors")
    return tree


SHARED = "catalog/008_add_color_up.sql and catalog/008_add_weight_up.sql share the number 008"


def test_status_warns_about_shared_numbers(scratch_db, merged):
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(merged))
    assert f"  warning: {SHARED}, so they run in the order of module and name" in out
    assert scratch_db.run("sqlmigrate_status", dir=str(merged), check=True)[2] == 1


def test_up_warns_about_shared_numbers_and_runs_them_in_name_order(scratch_db, merged):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(merged))
    assert rc == 0, err
    assert err.startswith(f"Warning: {SHARED}")
    assert scratch_db.records() == [
        ("catalog", "007_create_products"),
        ("catalog", "008_add_color"),
        ("catalog", "008_add_weight"),
    ]


def test_lint_warns_about_shared_numbers(scratch_db, merged):
    out, err, rc = scratch_db.run("sqlmigrate_lint", dir=str(merged), everything=True)
    assert rc == 0, err
    assert err.startswith(f"Warning: {SHARED}")


def test_unique_numbers_refuses_shared_numbers_before_anything_runs(scratch_db, merged, settings):
    settings.NIXMIG = {**settings.NIXMIG, "UNIQUE_NUMBERS": True}
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(merged))
    assert rc == 1
    assert f"has 1 error(s); nothing was run:\n  - {SHARED}" in err
    assert "migrations" not in scratch_db.tables() or scratch_db.records() == []


def test_status_check_exit_codes(scratch_db, three):
    assert scratch_db.run("sqlmigrate_status", dir=str(three), check=True)[2] == 1
    scratch_db.run("sqlmigrate_up", dir=str(three))
    assert scratch_db.run("sqlmigrate_status", dir=str(three), check=True)[2] == 0
    three.write("auth/007_orphan_down.sql", "SELECT 1;")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(three), check=True)
    assert rc == 1 and "1 problem(s)" in err
    proc = scratch_db.manage("sqlmigrate_status", "--dir", str(three), "--check")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_any_command_creates_the_tracking_table(scratch_db, three):
    assert "migrations" not in scratch_db.tables()
    scratch_db.run("sqlmigrate_status", dir=str(three))
    assert "migrations" in scratch_db.tables()


# -- sqlmigrate_new ------------------------------------------------------------------------


def test_new_numbers_after_the_highest_number_of_the_whole_tree(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_new", "billing", "create_invoices", dir=str(three))
    assert rc == 0, err
    up = three.path / "billing/004_create_invoices_up.sql"
    assert up.exists() and (three.path / "billing/004_create_invoices_down.sql").exists()
    assert up.read_text().startswith("-- billing/004_create_invoices: up\n")
    assert out == f"Created {up}\nCreated {three.path / 'billing/004_create_invoices_down.sql'}\n"


def test_new_pads_to_three_digits_or_wider(scratch_db, tree):
    tree.table_pair("auth/1_a", "a")
    scratch_db.run("sqlmigrate_new", "auth", "b", dir=str(tree))
    assert (tree.path / "auth/002_b_up.sql").exists()
    tree.table_pair("auth/1234_c", "c")
    scratch_db.run("sqlmigrate_new", "integrations/github", "d", dir=str(tree))
    assert (tree.path / "integrations/github/1235_d_up.sql").exists()


def test_new_creates_the_migrations_folder_and_says_so(tmp_path):
    folder = tmp_path / "migrations_sql"
    out = io.StringIO()
    call_command("sqlmigrate_new", "catalog", "create_products", dir=str(folder), stdout=out)
    up, down = folder / "catalog/001_create_products_up.sql", folder / "catalog/001_create_products_down.sql"
    assert up.exists() and down.exists()
    assert out.getvalue() == (
        f"Created the migrations folder {folder} (NIXMIG['MIGRATIONS_DIR'] or --dir names another).\n"
        f"Created {up}\nCreated {down}\n"
    )


def test_new_has_no_database_option():
    parser = load_command_class("nixmig", "sqlmigrate_new").create_parser("manage.py", "sqlmigrate_new")
    assert "--database" not in parser._option_string_actions
    assert "--dir" in parser._option_string_actions


def test_new_refuses_bad_names(scratch_db, tree):
    tree.table_pair("auth/001_a", "a")
    assert "is not a valid name" in scratch_db.run("sqlmigrate_new", "auth", "bad/name", dir=str(tree))[1]
    assert "is not a valid module" in scratch_db.run("sqlmigrate_new", "../up", "x", dir=str(tree))[1]


# -- errors and verbosity ------------------------------------------------------------------


def test_a_missing_dir_is_a_one_line_error(scratch_db, tmp_path):
    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"CommandError: The migrations directory {tmp_path / 'nope'} does not exist; "
        "create it, set NIXMIG['MIGRATIONS_DIR'], or pass --dir."
    )


def test_an_unreachable_database_is_a_one_line_error(scratch_db, three):
    env = scratch_db.env(DATABASE_URL="postgres://postgres@127.0.0.1:1/nowhere")
    proc = scratch_db.manage("sqlmigrate_up", "--dir", str(three), env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("CommandError: Can't connect to database 'default' (nowhere on 127.0.0.1:1)")
    assert len(err.splitlines()) == 1


def test_an_unknown_database_alias_is_a_clear_error(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), database="nope")
    assert rc == 1 and err.startswith("There is no database 'nope' in settings.DATABASES")


def test_verbosity_3_prints_the_sql(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three), verbosity=3)
    assert "CREATE TABLE orgs (id serial PRIMARY KEY, owner int);" in out


def test_django_migrate_before_and_after_does_not_fail(scratch_db, three):
    assert scratch_db.manage("migrate", "-v0").returncode == 0
    assert scratch_db.manage("sqlmigrate_up", "--dir", str(three), "-v0").returncode == 0
    proc = scratch_db.manage("migrate", "-v0")
    assert proc.returncode == 0, proc.stderr
    assert len(scratch_db.records()) == 3 and "django_migrations" in scratch_db.tables()


# -- the Python API ------------------------------------------------------------------------


def test_python_api_twins_of_the_go_api(scratch_db, three):
    db = scratch_db.alias
    tree = api.load_tree(three.path)
    assert len(tree.migrations) == 3
    events = []
    result = api.migrate_up(directory=three.path, database=db, progress=lambda e, **d: events.append(e))
    assert result.ids == ["auth/001_create_users", "orgs/002_create_orgs", "auth/003_create_tokens"]
    assert events.count("success") == 3
    assert [(r.module, r.name) for r in api.applied_migrations(db)] == scratch_db.records()
    assert api.rollback(directory=three.path, database=db).ids == ["auth/003_create_tokens"]
    assert api.rollback(2, directory=three.path, database=db).ids == [
        "orgs/002_create_orgs",
        "auth/001_create_users",
    ]
    api.migrate_up(directory=three.path, database=db)
    assert len(api.rollback_all(directory=three.path, database=db).ids) == 3
    api.migrate_up(directory=three.path, database=db)
    assert len(api.reset_migrations(directory=three.path, database=db).ids) == 3
    assert api.applied_migrations(db) == [] and "tokens" in scratch_db.tables()


# -- --help ----------------------------------------------------------------------------------

NIXMIG_COMMANDS = sorted(name for name, app in get_commands().items() if app == "nixmig")
ROLLOUT_OPTIONS = [
    "--parallel",
    "--executor",
    "--canary",
    "--on-error",
    "--report",
    "--only-failed",
    "--resume",
]


@pytest.mark.parametrize("name", NIXMIG_COMMANDS)
def test_every_option_of_every_command_has_help_text(name):
    parser = load_command_class("nixmig", name).create_parser("manage.py", name)
    undocumented = [a.option_strings or [a.dest] for a in parser._actions if not (a.help or "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("name", ["sqlmigrate_up", "sqlmigrate_down"])
def test_help_keeps_the_rollout_options_in_their_own_section_after_the_targets(name):
    parser = load_command_class("nixmig", name).create_parser("manage.py", name)
    groups = {g.title: [a.option_strings[0] for a in g._group_actions] for g in parser._action_groups}
    assert groups["rollout over several targets"] == ROLLOUT_OPTIONS
    assert groups["targets (databases, database URLs, schemas)"][:2] == ["--database", "--all-databases"]
    text = parser.format_help()
    assert text.index("targets (databases") < text.index("rollout over several targets:")
    assert (
        "--parallel"
        not in text[: text.index("rollout over several targets:")].split("usage:")[1].split("\n\n", 1)[1]
    )


def test_status_help_has_parallel_and_executor_but_no_rollout_reports():
    parser = load_command_class("nixmig", "sqlmigrate_status").create_parser("manage.py", "sqlmigrate_status")
    groups = {g.title: [a.option_strings[0] for a in g._group_actions] for g in parser._action_groups}
    assert groups["rollout over several targets"] == ["--parallel", "--executor"]


# -- examples in messages come from the user's tree ------------------------------------------


@pytest.fixture
def shop(tree):
    tree.table_pair("catalog/001_create_products", "products")
    tree.table_pair("catalog/002_add_sku", "skus")
    return tree


def test_an_unknown_id_is_answered_with_the_closest_id_of_the_tree(scratch_db, shop):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(shop), to="catalog/002_add_skus")
    assert rc == 1
    assert err == (
        "There is no migration 'catalog/002_add_skus'. Did you mean catalog/002_add_sku? Use an id as "
        "sqlmigrate_status shows it."
    )


def test_an_unknown_id_with_nothing_close_gets_an_example_from_the_tree(scratch_db, shop):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(shop), to="zzz")
    assert rc == 1
    assert err == (
        "There is no migration 'zzz'. Use an id as sqlmigrate_status shows it, e.g. catalog/001_create_products."
    )
    assert "auth/" not in err


def test_help_texts_name_no_demo_ids():
    for name in ("sqlmigrate_up", "sqlmigrate_lint", "sqlmigrate_down"):
        text = load_command_class("nixmig", name).create_parser("manage.py", name).format_help()
        assert "auth/0" not in text, name
