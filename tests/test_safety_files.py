"""Files that can't run in a transaction, files with their own BEGIN/COMMIT, edited and
reordered files, and per-file timeouts: each against a real PostgreSQL database."""

from __future__ import annotations

import json

import psycopg
import pytest
from django.test import override_settings

from nixmig import api
from nixmig.exceptions import MigrationFailed
from nixmig.sqltext import analyze, prepare
from nixmig.tree import load_tree

TRICKY_NO_TX = """\
-- nixmig:no-transaction
-- statements with ';' inside dollar quotes, quoted identifiers, E'' strings and comments
CREATE TABLE "semi;colon" (v text);
INSERT INTO "semi;colon" VALUES (E'it\\'s; escaped'), ('plain; text') /* a ; /* nested ; */ comment */;
-- a comment; with a semicolon
CREATE FUNCTION semi_count() RETURNS bigint LANGUAGE plpgsql AS $body$
BEGIN
    RETURN (SELECT count(*) FROM "semi;colon" WHERE v LIKE '%;%');
END;
$body$;
CREATE INDEX CONCURRENTLY semi_v_idx ON "semi;colon" (v);
"""


def _status_json(scratch_db, tree) -> dict:
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    assert rc == 0, err
    return {m["id"]: m for m in json.loads(out)["migrations"]}


def _connect(scratch_db, **kwargs) -> psycopg.Connection:
    s = scratch_db.settings
    return psycopg.connect(
        dbname=scratch_db.name,
        host=s.get("HOST") or None,
        port=s.get("PORT") or None,
        user=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        **kwargs,
    )


# -- no-transaction files --------------------------------------------------------------


def test_splitter_keeps_semicolons_inside_quotes_identifiers_and_comments(tree):
    path = tree.write("idx/001_tricky_up.sql", TRICKY_NO_TX)
    prepared = prepare(load_tree(tree.path).get("idx/001_tricky").up)
    texts = [prepared.body[s.start : s.end] for s in prepared.analysis.statements]
    assert [s.kind for s in prepared.analysis.statements] == [
        "CreateStmt",
        "InsertStmt",
        "CreateFunctionStmt",
        "IndexStmt",
    ]
    assert [s.line for s in prepared.analysis.statements] == [3, 4, 6, 11]
    assert texts[1].startswith("INSERT INTO \"semi;colon\" VALUES (E'it\\'s; escaped')")
    assert texts[2].endswith("$body$") and "RETURN (SELECT" in texts[2]
    assert path.exists()


def test_no_transaction_file_runs_each_statement_alone_and_records_after_the_last(scratch_db, tree):
    tree.table_pair("base/001_first", "first_t")
    tree.pair(
        "idx/002_tricky",
        TRICKY_NO_TX,
        "-- nixmig:no-transaction\nDROP INDEX CONCURRENTLY semi_v_idx;\n"
        'DROP FUNCTION semi_count(); DROP TABLE "semi;colon";\n',
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.value("SELECT semi_count()") == 2
    assert scratch_db.value("SELECT v FROM \"semi;colon\" WHERE v LIKE 'it%'") == "it's; escaped"
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = 'semi_v_idx'::regclass") is True
    )
    assert scratch_db.records() == [("base", "001_first"), ("idx", "002_tricky")]
    assert scratch_db.value("SELECT count(*) FROM migrations_progress") == 0


def test_no_transaction_directive_works_in_down_files(scratch_db, tree):
    tree.pair(
        "idx/001_tricky",
        TRICKY_NO_TX,
        "-- nixmig:no-transaction\nDROP INDEX CONCURRENTLY semi_v_idx;\n"
        'DROP FUNCTION semi_count();\nDROP TABLE "semi;colon";\n',
    )
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(tree))
    assert rc == 0, err
    assert "semi;colon" not in scratch_db.tables()
    assert scratch_db.records() == []


FAILING_NO_TX = """\
-- nixmig:no-transaction
CREATE TABLE part_a (id int);
CREATE TABLE part_b (id int);
INSERT INTO part_a
    SELECT nope FROM part_b;
CREATE INDEX CONCURRENTLY part_a_idx ON part_a (id);
"""


def test_no_transaction_failure_names_statement_and_line_and_status_shows_partly_applied(scratch_db, tree):
    tree.pair("idx/001_parts", FAILING_NO_TX, None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "001_parts_up.sql line 5" in err  # 'nope', on the statement's second line
    assert 'column "nope" does not exist' in err
    assert "failed at statement 3 of 4" in err
    assert "statements 1..2 ran and are kept as progress, so it is partly applied and not recorded" in err
    assert "resume at statement 3" in err
    assert {"part_a", "part_b"} <= scratch_db.tables()
    assert scratch_db.records() == []

    entry = _status_json(scratch_db, tree)["idx/001_parts"]
    assert entry["state"] == "partly_applied"
    assert entry["progress"]["statements_done"] == 2 and entry["progress"]["statements_total"] == 4
    text, _, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert " [!] 001_parts" in text and "partly applied" in text
    assert (
        "statements 1..2 (lines 2 to 3) of 4 of its no-transaction up file idx/001_parts_up.sql ran" in text
    )


def test_next_run_resumes_a_failed_no_transaction_file_at_the_failed_statement(scratch_db, tree):
    tree.pair("idx/001_parts", FAILING_NO_TX, None)
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 1
    # Fix statement 3. Statements 1 and 2 must not run again (CREATE TABLE would fail).
    tree.write("idx/001_parts_up.sql", FAILING_NO_TX.replace("SELECT nope", "SELECT id"))
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert "resuming at statement 3 of 4" in out
    assert scratch_db.records() == [("idx", "001_parts")]
    assert scratch_db.value("SELECT count(*) FROM migrations_progress") == 0
    assert _status_json(scratch_db, tree)["idx/001_parts"]["state"] == "applied"


def test_resume_is_refused_when_statements_already_applied_were_edited(scratch_db, tree):
    tree.pair("idx/001_parts", FAILING_NO_TX, None)
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 1
    tree.write("idx/001_parts_up.sql", FAILING_NO_TX.replace("part_b (id int)", "part_b (id bigint)"))
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "statements 1..2 of idx/001_parts_up.sql ran, and have been edited since" in err
    assert scratch_db.records() == []


def test_a_failed_create_index_concurrently_drops_the_invalid_index_it_left_and_says_so(scratch_db, tree):
    scratch_db.sql("CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1)")
    up = "-- nixmig:no-transaction\nCREATE TABLE keep_me (id int);\nCREATE UNIQUE INDEX CONCURRENTLY dup_v_key ON dup (v);\n"
    tree.pair("idx/001_unique", up, None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and "failed at statement 2 of 2" in err
    # PostgreSQL leaves an INVALID index behind when CREATE INDEX CONCURRENTLY fails; nixmig drops it at once.
    assert "removed what it left in the catalog: the INVALID index public.dup_v_key" in err
    assert "removed the INVALID index public.dup_v_key" in err  # the event line, as it happened
    assert scratch_db.value("SELECT to_regclass('dup_v_key')") is None
    scratch_db.sql("DELETE FROM dup WHERE ctid <> (SELECT min(ctid) FROM dup)")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('dup_v_key')")
        is True
    )
    assert scratch_db.records() == [("idx", "001_unique")]


def test_rerun_drops_an_invalid_index_of_the_same_name_left_from_before(scratch_db, tree):
    scratch_db.sql("CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1)")
    # an INVALID index, as a failed build by hand leaves it (the duplicate makes it fail)
    with (
        scratch_db.connection.cursor() as cursor,
        pytest.raises(Exception, match="could not create unique index"),
    ):
        cursor.execute("CREATE UNIQUE INDEX CONCURRENTLY dup_v_key ON dup (v)")
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('dup_v_key')")
        is False
    )
    scratch_db.sql("DELETE FROM dup WHERE ctid <> (SELECT min(ctid) FROM dup)")
    up = "-- nixmig:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY dup_v_key ON dup (v);\n"
    tree.pair("idx/001_unique", up, None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert "removed the INVALID index public.dup_v_key" in err
    assert (
        scratch_db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('dup_v_key')")
        is True
    )


def test_status_and_check_report_an_invalid_index_on_a_table_the_tree_names_with_its_fix(scratch_db, tree):
    tree.pair("shop/001_items", "CREATE TABLE items (id int);\nINSERT INTO items VALUES (1), (1);\n", None)
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    scratch_db.sql("CREATE TABLE elsewhere (id int); INSERT INTO elsewhere VALUES (1), (1)")
    for table in ("items", "elsewhere"):  # a failed unique build by hand leaves an INVALID index on each
        with scratch_db.connection.cursor() as cursor, pytest.raises(Exception, match="could not create"):
            cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {table}_id_key ON {table} (id)")

    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), check=True)

    assert rc == 1
    assert (
        "  warning: INVALID index public.items_id_key on items: left by a statement that runs outside a "
        'transaction and was interrupted or failed; fix it with: DROP INDEX CONCURRENTLY IF EXISTS "public"."items_id_key";'
    ) in out
    assert "elsewhere" not in out  # a table no file of the tree names is not this tree's business
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    assert [x["fix"] for x in json.loads(out)["leftovers"]] == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."items_id_key";'
    ]


def test_statements_that_leave_catalog_state_are_known_by_what_they_leave(tree):
    effects = [
        s.effect
        for s in analyze(
            "CREATE UNIQUE INDEX CONCURRENTLY ON s.big (a, lower(b));\n"
            "CREATE INDEX CONCURRENTLY big_a_idx ON big (a);\n"
            "REINDEX INDEX CONCURRENTLY big_a_idx;\nREINDEX (VERBOSE) TABLE CONCURRENTLY s.big;\n"
            "REINDEX SCHEMA CONCURRENTLY app;\nALTER TABLE ev DETACH PARTITION s.ev_2020 CONCURRENTLY;\n"
            "VACUUM big;\nCREATE INDEX big_b_idx ON big (b);\n"
        ).statements
    ]
    assert [(e.kind, e.relation, e.name, e.columns, e.unique, e.target) if e else None for e in effects] == [
        ("index", ("s", "big"), (), ("a", ""), True, ""),
        ("index", ("big",), ("big_a_idx",), ("a",), False, ""),
        ("reindex", ("big_a_idx",), (), (), False, "INDEX"),
        ("reindex", ("s", "big"), (), (), False, "TABLE"),
        ("reindex", ("app",), (), (), False, "SCHEMA"),
        ("detach", ("ev",), ("s", "ev_2020"), (), False, ""),
        None,
        None,
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "REINDEX SCHEMA CONCURRENTLY public",
        "REINDEX DATABASE CONCURRENTLY whatever",
        "REINDEX DATABASE CONCURRENTLY",
        "REINDEX TABLE CONCURRENTLY t",
    ],
)
def test_reindex_leftovers_are_read_for_every_target(scratch_db, statement):
    from nixmig import leftovers

    scratch_db.sql("CREATE TABLE t (v int); CREATE INDEX t_v_idx ON t (v)")
    (stmt,) = analyze(statement + ";").statements
    with scratch_db.connection.cursor() as cursor:
        found = leftovers.inspect(cursor, stmt)
    assert found == leftovers.Found(False, (), None)


@pytest.mark.parametrize(
    "statement, what",
    [
        ("CREATE INDEX CONCURRENTLY t_v_idx ON t (v);", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY IF EXISTS t_v_idx;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY t;", "REINDEX ... CONCURRENTLY"),
        ("VACUUM (ANALYZE) t;", "VACUUM"),
        ("ALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM"),
        ("CREATE DATABASE nixmig_never_created;", "CREATE DATABASE"),
    ],
)
def test_statement_that_cant_run_in_a_transaction_is_refused_before_anything_runs(
    scratch_db, tree, statement, what
):
    tree.table_pair("base/001_first", "first_t")
    tree.pair("base/002_bad", f"-- no directive here\nCREATE TABLE t (v int);\n{statement}\n", None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "base/002_bad_up.sql:3:" in err
    assert f"{what} can't run inside a transaction" in err
    assert "'-- nixmig:no-transaction'" in err
    assert scratch_db.tables() == set()  # not even 001, nor the tracking table


def test_analyze_is_not_fooled_by_vacuum_in_a_string_or_analyze_alone():
    analysis = analyze("SELECT 'VACUUM; CREATE INDEX CONCURRENTLY x ON y (z)';\nANALYZE;\n")
    assert analysis.no_transaction == ()


# -- files with their own BEGIN / COMMIT --------------------------------------------------


def test_own_begin_commit_files_never_leave_records_out_of_step_with_the_schema(scratch_db, tree):
    tree.pair("own/001_good", "BEGIN;\nCREATE TABLE own_good (id int);\nCOMMIT;\n", "DROP TABLE own_good;\n")
    tree.pair(
        "own/002_bad",
        "BEGIN;\nCREATE TABLE own_bad (id int);\nSELECT 1/0;\nCOMMIT;\n",
        "DROP TABLE own_bad;\n",
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "Applying own/002_bad failed at " in err and "002_bad_up.sql" in err
    assert "division by zero" in err
    assert scratch_db.records() == [("own", "001_good")]
    assert "own_good" in scratch_db.tables()  # recorded -> present
    assert "own_bad" not in scratch_db.tables()  # not recorded -> no effect


def test_own_commit_in_the_middle_of_a_file_does_not_commit_half_of_it(scratch_db, tree):
    tree.pair(
        "own/001_two_tx",
        "BEGIN;\nCREATE TABLE half_a (id int);\nCOMMIT;\n"
        "START TRANSACTION;\nCREATE TABLE half_b (id int);\nINSERT INTO nowhere VALUES (1);\nEND;\n",
        None,
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1 and 'relation "nowhere" does not exist' in err
    assert {"half_a", "half_b"} & scratch_db.tables() == set()
    assert scratch_db.value("SELECT count(*) FROM migrations") == 0


def test_begin_inside_plpgsql_is_not_transaction_control(scratch_db, tree):
    up = """\
    CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        RETURN i + 1;
    END;
    $$;
    DO $$ BEGIN PERFORM add_one(1); END $$;
    CREATE FUNCTION add_two(i int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT i + 2; END;
    """
    tree.pair("fn/001_functions", up, "DROP FUNCTION add_one(int); DROP FUNCTION add_two(int);\n")
    prepared = prepare(load_tree(tree.path).get("fn/001_functions").up)
    assert prepared.own_transaction is False and prepared.analysis.transaction_control == ()
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.value("SELECT add_one(1) + add_two(1)") == 5


def test_top_level_rollback_is_refused_before_anything_runs(scratch_db, tree):
    tree.pair("own/001_rollback", "BEGIN;\nCREATE TABLE rb (id int);\nROLLBACK;\n", None)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "001_rollback_up.sql:3: a top-level ROLLBACK" in err
    assert scratch_db.tables() == set()


# -- edited and reordered files -------------------------------------------------------


def test_line_endings_and_bom_are_not_edits(scratch_db, tree):
    tree.pair("auth/001_users", "CREATE TABLE users (id int);\nCREATE TABLE roles (id int);\n")
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    tree.write(
        "auth/001_users_up.sql",
        raw=b"\xef\xbb\xbfCREATE TABLE users (id int);\r\nCREATE TABLE roles (id int);\r\n",
    )
    assert _status_json(scratch_db, tree)["auth/001_users"]["state"] == "applied"
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert (out, rc) == ("No migrations to apply.\n", 0)


def test_edited_applied_file_is_refused_until_allowed_or_repaired(scratch_db, tree):
    tree.pair("auth/001_users", "CREATE TABLE users (id int);\n")
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    tree.write("auth/001_users_up.sql", "CREATE TABLE users (id bigint);\n")
    tree.table_pair("auth/002_roles", "roles")
    assert _status_json(scratch_db, tree)["auth/001_users"]["state"] == "changed"

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert (
        "1 applied migration(s) were edited after they were applied:\n  - auth/001_users (auth/001_users_up.sql)"
        in err
    )
    assert "sqlmigrate_repair" in err and "--allow-changed" in err
    assert "roles" not in scratch_db.tables()

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), allow_changed=True)
    assert rc == 0, err
    assert "roles" in scratch_db.tables()
    assert _status_json(scratch_db, tree)["auth/001_users"]["state"] == "changed"  # still flagged

    out, err, rc = scratch_db.run("sqlmigrate_repair", dir=str(tree))
    assert (out, rc) == ("  Recorded the new checksum of auth/001_users\n", 0)
    assert _status_json(scratch_db, tree)["auth/001_users"]["state"] == "applied"
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[:3:2] == ("No migrations to apply.\n", 0)


def test_out_of_order_migration_is_refused_until_allowed(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("auth/003_roles", "roles")
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 0
    tree.table_pair("billing/002_invoices", "invoices")  # merged from a branch

    entries = _status_json(scratch_db, tree)
    assert entries["billing/002_invoices"]["out_of_order"] is True
    assert entries["billing/002_invoices"]["state"] == "pending"
    assert entries["auth/003_roles"]["out_of_order"] is False

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 1
    assert "out of order" in err and "  - billing/002_invoices" in err and "--allow-out-of-order" in err
    assert "invoices" not in scratch_db.tables()

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), allow_out_of_order=True)
    assert rc == 0, err
    assert scratch_db.records()[-1] == ("billing", "002_invoices")


# -- timeouts and lock queues ------------------------------------------------------------


def test_lock_and_statement_timeouts_are_set_per_migration_and_overridable_per_file(scratch_db, tree):
    tree.pair(
        "t/001_default",
        "CREATE TABLE seen_default AS SELECT current_setting('lock_timeout') AS lt, "
        "current_setting('statement_timeout') AS st;\n",
    )
    tree.pair(
        "t/002_override",
        "-- nixmig:lock-timeout=250ms\n-- nixmig:statement-timeout=5min\n"
        "CREATE TABLE seen_override AS SELECT current_setting('lock_timeout') AS lt, "
        "current_setting('statement_timeout') AS st;\n",
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.sql("SELECT lt, st FROM seen_default") == [("10s", "0")]
    assert scratch_db.sql("SELECT lt, st FROM seen_override") == [("250ms", "5min")]
    # SET LOCAL: nothing leaks into the session afterwards.
    assert scratch_db.value("SHOW lock_timeout") == "0"


def test_lock_not_available_is_retried_with_backoff_saying_so(scratch_db, tree):
    scratch_db.sql("CREATE TABLE busy (id int)")
    tree.pair("t/001_alter_busy", "-- nixmig:lock-timeout=50ms\nALTER TABLE busy ADD COLUMN note text;\n")
    blocker = _connect(scratch_db)
    blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")  # an app transaction that reads the table
    events = []

    def progress(event, **data):
        events.append((event, data))
        if event == "retry":
            blocker.commit()  # the app's transaction ends while nixmig backs off

    try:
        with override_settings(NIXMIG={"LOCK_RETRIES": 2}):
            result = api.migrate_up(directory=tree.path, database=scratch_db.alias, progress=progress)
    finally:
        blocker.close()
    retries = [data for event, data in events if event == "retry"]
    assert len(retries) == 1
    assert "lock timeout" in retries[0]["reason"] and "55P03" in retries[0]["reason"]
    assert (retries[0]["attempt"], retries[0]["retries"]) == (1, 2)
    assert result.ids == ["t/001_alter_busy"]
    assert scratch_db.value("SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'") == 1


def test_lock_not_available_gives_up_after_the_retries_and_says_so(scratch_db, tree):
    scratch_db.sql("CREATE TABLE busy (id int)")
    tree.pair("t/001_alter_busy", "-- nixmig:lock-timeout=50ms\nALTER TABLE busy ADD COLUMN note text;\n")
    blocker = _connect(scratch_db)
    blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    try:
        with override_settings(NIXMIG={"LOCK_RETRIES": 1}):
            out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    finally:
        blocker.close()
    assert rc == 1
    assert "canceling statement due to lock timeout (SQLSTATE 55P03); retry 1/1 in 1 s" in err
    assert "Applying t/001_alter_busy failed" in err and "rolled back and is not recorded" in err
    assert scratch_db.records() == []


def test_failed_transactional_migration_reports_its_line_and_keeps_earlier_ones(scratch_db, tree):
    tree.table_pair("a/001_one", "one_t")
    tree.pair("a/002_two", "CREATE TABLE two_t (id int);\n\nINSERT INTO two_t VALUES ('x');\n")
    with pytest.raises(MigrationFailed) as info:
        api.migrate_up(directory=tree.path, database=scratch_db.alias)
    assert "002_two_up.sql line 3" in str(info.value)
    assert info.value.applied == ("a/001_one",)
    assert scratch_db.tables() >= {"one_t"} and "two_t" not in scratch_db.tables()


def test_waiting_runner_is_told_who_holds_the_lock_and_runs_once_it_is_released(scratch_db, tree):
    tree.table_pair("a/001_one", "one_t")
    holder = _connect(scratch_db, autocommit=True)
    holder.execute("SET application_name = 'deploy-on-replica-2'")
    holder.execute("SELECT pg_advisory_lock(hashtextextended('nixmig:migrations:' || current_database(), 0))")
    holder_pid = holder.info.backend_pid
    events = []

    def progress(event, **data):
        events.append((event, data))
        if event == "lock_wait":
            holder.execute("SELECT pg_advisory_unlock_all()")

    try:
        result = api.migrate_up(directory=tree.path, database=scratch_db.alias, progress=progress)
    finally:
        holder.close()
    waits = [data for event, data in events if event == "lock_wait"]
    assert waits[0]["holder"]["pid"] == holder_pid
    assert waits[0]["holder"]["application_name"] == "deploy-on-replica-2"
    assert [event for event, _ in events][:3] == ["lock_wait", "lock_acquired", "plan"]
    assert result.ids == ["a/001_one"]


def test_a_resumed_file_says_ok_on_the_line_of_its_migration(scratch_db, tree):
    tree.pair("idx/001_parts", FAILING_NO_TX, None)
    assert scratch_db.run("sqlmigrate_up", dir=str(tree))[2] == 1
    tree.write("idx/001_parts_up.sql", FAILING_NO_TX.replace("SELECT nope", "SELECT id"))
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    lines = out.splitlines()
    assert [line for line in lines if "OK" in line] == [
        next(
            line
            for line in lines
            if line.startswith("  Applying idx/001_parts... resuming at statement 3 of 4... OK (")
        )
    ]
    assert not any(line.lstrip().startswith("OK") for line in lines)


def test_statement_lines_at_verbosity_2_end_with_the_migration_and_ok(scratch_db, tree):
    tree.pair(
        "idx/001_parts", "-- nixmig:no-transaction\nCREATE TABLE p (id int);\nCREATE TABLE q (id int);\n"
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=2)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[lines.index("    statement 2/2 (line 3)") + 1].startswith("  Applying idx/001_parts... OK (")


SLOW_NO_TX = """\
-- nixmig:no-transaction
SELECT pg_sleep(0.2);
CREATE TABLE slow (id int);
SELECT pg_sleep(0.2);
"""


def test_a_no_transaction_file_takes_the_sum_of_its_statements_on_screen_in_json_and_in_the_admin(
    scratch_db, tree
):
    tree.pair("slow/001_sleepy", SLOW_NO_TX, "DROP TABLE slow;\n")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    screen = int(out.split("Applying slow/001_sleepy... OK (")[1].split(" ms)")[0])
    recorded = _status_json(scratch_db, tree)["slow/001_sleepy"]["execution_ms"]
    assert recorded >= 400  # both sleeps, not only the last statement's transaction
    assert abs(screen - recorded) <= 1  # the same figure, rounded on screen
    from nixmig.admin import MigrationRecordAdmin
    from nixmig.models import MigrationRecord

    record = MigrationRecord.objects.using(scratch_db.alias).get(name="001_sleepy")
    assert MigrationRecordAdmin.execution_time(None, record) == f"{recorded:.0f} ms"
