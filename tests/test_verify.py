"""sqlmigrate_verify (issue 10): round trips in a scratch database, drift, stored results, snapshots.

Every test runs against a real PostgreSQL; verify creates (and drops) its own scratch
database on the same server as the test's database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nixmig import snapshot
from nixmig.tree import load_tree
from nixmig.verify import VerifyStore

SAMPLE = Path(__file__).resolve().parent.parent / "migrations_sql"


def verify_json(db, tree, **options) -> tuple[dict, str, int]:
    out, err, rc = db.run("sqlmigrate_verify", dir=str(tree), json=True, **options)
    assert out.strip(), err
    return json.loads(out), err, rc


def by_id(report: dict) -> dict:
    return {m["id"]: m for m in report["migrations"]}


def messages(migration: dict) -> list[str]:
    return [f["message"] for f in migration["findings"]]


def scratch_databases(db) -> list[str]:
    """The scratch databases of this process (others may verify on the same server meanwhile)."""
    return [
        r[0]
        for r in db.sql(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"nixmig\\_verify\\_{os.getpid()}\\_%"]
        )
    ]


# -- round trips -------------------------------------------------------------------------------


def test_sample_tree_round_trips_are_all_exact(scratch_db):
    before = set(scratch_databases(scratch_db))
    report, err, rc = verify_json(scratch_db, SAMPLE)
    assert rc == 0, err
    assert [m["result"] for m in report["migrations"]] == ["exact"] * len(load_tree(SAMPLE).migrations)
    assert report["counts"]["exact"] == 14 and report["ok"] is True
    assert "[14/14] verify audit/014_create_audit_logs ... exact" in err  # progress on stderr with --json
    assert set(scratch_databases(scratch_db)) == before  # the scratch database is gone


@pytest.fixture
def broken(tree):
    tree.pair(
        "auth/001_create_users",
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n"
        "CREATE TABLE roles (id serial PRIMARY KEY, name text NOT NULL);\n"
        "INSERT INTO roles (name) VALUES ('admin'), ('member'), ('guest');\n",
        "DROP TABLE roles;\nDROP TABLE users;\n",
    )
    tree.pair(
        "auth/002_create_sessions",  # leaves a table behind
        "CREATE TABLE sessions (id serial PRIMARY KEY);\nCREATE TABLE session_logs (id serial PRIMARY KEY);\n",
        "DROP TABLE session_logs;\n",
    )
    tree.pair(
        "auth/003_add_nick",  # drops a column the up did not create
        "ALTER TABLE users ADD COLUMN nick text;\n",
        "ALTER TABLE users DROP COLUMN nick;\nALTER TABLE users DROP COLUMN email;\n",
    )
    tree.pair("auth/004_create_mood", "CREATE TYPE mood AS ENUM ('sad', 'ok');\n", "DROP TYPE mood;\n")
    tree.pair(
        "auth/005_add_happy",  # an enum label can't be removed: the up can't run again
        "-- a new label\n\nALTER TYPE mood ADD VALUE 'happy';\n",
        "SELECT 1;\n",
    )
    tree.pair("auth/006_index_roles", "CREATE INDEX roles_name_idx ON roles (name);\n", "")  # no-op down
    tree.pair(
        "auth/007_role_level",  # deletes a seed row: a warning, the schema is exact
        "ALTER TABLE roles ADD COLUMN level int;\n",
        "ALTER TABLE roles DROP COLUMN level;\nDELETE FROM roles WHERE name = 'guest';\n",
    )
    tree.pair("auth/008_create_audit", "CREATE TABLE audit (id serial PRIMARY KEY);\n", None)  # irreversible
    tree.pair(
        "auth/009_create_tokens",  # the down fails
        "CREATE TABLE tokens (id serial PRIMARY KEY);\n",
        "DROP TABLE tokenz;\n",
    )
    tree.table_pair("auth/010_create_keys", "keys")
    return tree


def test_each_kind_of_broken_down_is_found_and_named(scratch_db, broken):
    report, err, rc = verify_json(scratch_db, broken)
    assert rc == 1, err
    results = by_id(report)
    assert {mid: m["result"] for mid, m in results.items()} == {
        "auth/001_create_users": "exact",
        "auth/002_create_sessions": "not exact",
        "auth/003_add_nick": "not exact",
        "auth/004_create_mood": "exact",
        "auth/005_add_happy": "not exact",
        "auth/006_index_roles": "not exact",
        "auth/007_role_level": "warning",
        "auth/008_create_audit": "irreversible",
        "auth/009_create_tokens": "not exact",
        "auth/010_create_keys": "exact",
    }
    sessions = messages(results["auth/002_create_sessions"])
    assert sessions[0] == "down leaves table `sessions` behind"
    assert (
        sessions[1].startswith(
            "the up is not re-runnable after its down: Applying auth/002_create_sessions failed at "
        )
        and 'relation "sessions" already exists (SQLSTATE 42P07)' in sessions[1]
    )
    assert messages(results["auth/003_add_nick"])[0] == (
        "down drops column `users.email`, which the up did not create"
    )
    happy = messages(results["auth/005_add_happy"])
    assert happy[0] == (
        "down does not restore type `mood`: ENUM ('sad', 'ok') before the up, "
        "ENUM ('sad', 'ok', 'happy') after the down"
    )
    assert happy[1].startswith("the up is not re-runnable after its down: ")
    assert "005_add_happy_up.sql line 3" in happy[1] and 'enum label "happy" already exists' in happy[1]
    noop = messages(results["auth/006_index_roles"])
    assert noop[0].startswith(
        "the down file auth/006_index_roles_down.sql is empty (an explicit no-op), but the up "
        "changes the schema"
    )
    assert noop[1] == "down leaves index `roles_name_idx` behind"
    level = results["auth/007_role_level"]["findings"]
    assert [(f["level"], f["message"]) for f in level] == [
        (
            "warning",
            "down deletes 1 row(s) of table `roles` (3 before the up, 2 after the down): seed or existing "
            "data is not restored",
        )
    ]
    assert messages(results["auth/008_create_audit"])[0].startswith("irreversible: no down file")
    tokens = messages(results["auth/009_create_tokens"])
    assert len(tokens) == 1 and tokens[0].startswith("the down fails: ")
    assert "009_create_tokens_down.sql line 1" in tokens[0] and 'table "tokenz" does not exist' in tokens[0]
    assert report["summary"] == (
        f"Verified 10 migration(s) in {report['seconds']:.1f} s: 3 exact, 1 with warnings, "
        "5 not exact, 1 irreversible, 0 failed."
    )


def test_text_report_groups_findings_by_migration_and_ends_with_the_summary(scratch_db, broken):
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(broken), to="auth/003_add_nick")
    assert rc == 1
    lines = out.splitlines()
    assert lines[:3] == [
        "[1/3] verify auth/001_create_users ... exact",
        "[2/3] verify auth/002_create_sessions ... not exact",
        "[3/3] verify auth/003_add_nick ... not exact",
    ]
    assert lines[3:6] == [
        "Round trips that are not exact:",
        " [!] auth/002_create_sessions: not exact",
        "     - down leaves table `sessions` behind",
    ]
    assert lines[6].startswith("     - the up is not re-runnable after its down: ")
    assert lines[7:9] == [
        " [!] auth/003_add_nick: not exact",
        "     - down drops column `users.email`, which the up did not create",
    ]
    assert lines[-1].startswith("Verified 3 migration(s) in ") and lines[-1].endswith(
        "1 exact, 0 with warnings, 2 not exact, 0 irreversible, 0 failed."
    )
    assert "not exact" in err  # the CommandError paragraph, exit code 1


def test_from_applies_earlier_migrations_without_checking_them(scratch_db, broken):
    report, err, rc = verify_json(scratch_db, broken, start="auth/004_create_mood", to="auth/004_create_mood")
    assert rc == 0, err
    assert [(m["id"], m["result"]) for m in report["migrations"]] == [("auth/004_create_mood", "exact")]


def test_a_failing_up_is_recorded_and_later_migrations_are_still_checked(scratch_db, tree):
    tree.table_pair("a/001_t1", "t1")
    tree.pair("a/002_bad", "CREATE TABLE t2 (id int REFERENCES nope(id));\n", "DROP TABLE t2;\n")
    tree.table_pair("a/003_t3", "t3")
    tree.pair("a/004_t2_index", "CREATE INDEX t2_id_idx ON t2 (id);\n", "DROP INDEX t2_id_idx;\n")
    tree.table_pair("a/005_t5", "t5")
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 1
    assert [m["result"] for m in report["migrations"]] == ["exact", "failed", "exact", "not run", "exact"]
    assert messages(report["migrations"][1])[0].startswith("the up fails on a clean replay: ")
    assert messages(report["migrations"][3])[0].startswith(
        "not checked: its up fails without a/002_bad, whose up failed before it: Applying a/004_t2_index failed"
    )
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree))
    assert "Not checked (their up fails after an earlier up failed):\n [ ] a/004_t2_index: not run\n" in out


def test_keep_keeps_the_scratch_database_and_names_it(scratch_db, tree):
    tree.table_pair("a/001_t1", "t1")
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), keep=True)
    assert rc == 0, err
    kept = [line for line in out.splitlines() if line.startswith("Kept the scratch database ")]
    assert len(kept) == 1
    name = kept[0].split()[4]
    try:
        assert name in scratch_databases(scratch_db)
    finally:
        scratch_db.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_bad_input_exits_2_with_one_paragraph(scratch_db, tree):
    tree.table_pair("a/001_t1", "t1")
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), to="a/999_nope")
    assert rc == 2
    assert err == (
        f"--to a/999_nope: no such migration in {tree}; sqlmigrate_status lists the ids (module/NNN_name)."
    )


def test_without_the_right_to_create_databases_it_says_how_to_fix_it(scratch_db, tree, settings):
    from django.db import connections

    tree.table_pair("a/001_t1", "t1")
    role = f"nixmig_nocreatedb_{scratch_db.name[-6:]}"
    scratch_db.sql(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    alias = f"{scratch_db.alias}_weak"
    connections.settings[alias] = dict(scratch_db.settings, USER=role, PASSWORD="")
    try:
        out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), database=alias)
        if "password authentication failed" in err or "no pg_hba.conf entry" in err:
            pytest.skip("this server does not let a new role log in without a password")
        assert rc == 2
        assert err.startswith("Can't create the scratch database nixmig_verify_")
        assert "permission denied to create database" in err
        assert f'ALTER ROLE "{role}" CREATEDB' in err and "NIXMIG['VERIFY_DATABASE_URL']" in err
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]
        scratch_db.sql(f'DROP ROLE IF EXISTS "{role}"')


# -- drift -------------------------------------------------------------------------------------


@pytest.fixture
def migrated(scratch_db, tree):
    tree.pair(
        "app/001_create_users",
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\n"
        "CREATE INDEX users_email_idx ON users (email);\n"
        "CREATE FUNCTION greeting(name text) RETURNS text LANGUAGE sql AS $$ SELECT 'hello ' || name $$;\n",
        "DROP FUNCTION greeting(text);\nDROP TABLE users;\n",
    )
    tree.table_pair("app/002_create_orgs", "orgs")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    return tree


def test_a_database_migrated_by_the_tree_has_no_drift(scratch_db, migrated):
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(migrated), drift=True)
    assert rc == 0, err
    assert (
        out.splitlines()[-1] == f"No drift: database '{scratch_db.alias}' matches its 2 applied migration(s)."
    )


def test_hand_made_changes_are_found_with_both_definitions(scratch_db, migrated):
    scratch_db.sql("ALTER TABLE users ADD COLUMN nickname varchar(40)")
    scratch_db.sql("DROP INDEX users_email_idx")
    scratch_db.sql(
        "CREATE OR REPLACE FUNCTION greeting(name text) RETURNS text LANGUAGE sql "
        "AS $$ SELECT 'hi ' || name $$"
    )
    report, err, rc = verify_json(scratch_db, migrated, drift=True)
    assert rc == 1
    drift = report["drift"]
    assert [(d["kind"], d["name"], d["live"]) for d in drift["only_live"]] == [
        ("column", "public.users.nickname", "character varying(40)")
    ]
    assert [(d["kind"], d["name"]) for d in drift["only_tree"]] == [("index", "public.users_email_idx")]
    assert drift["only_tree"][0]["tree"] == "CREATE INDEX users_email_idx ON public.users USING btree (email)"
    [function] = drift["different"]
    assert (function["kind"], function["name"]) == ("function", "public.greeting(name text)")
    assert function["tree"] != function["live"] and "body md5" in function["live"]
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(migrated), drift=True)
    assert (
        "Only in the live database (made by hand?):\n  column users.nickname: character varying(40)\n" in out
    )
    assert (
        "Only in the tree (dropped or never applied by hand?):\n  index users_email_idx: CREATE INDEX" in out
    )


def test_drift_never_writes_to_the_live_database(scratch_db, tree):
    tree.table_pair("app/001_create_users", "users")
    scratch_db.sql("CREATE TABLE users (id serial PRIMARY KEY)")  # made by hand; nixmig never ran here
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), drift=True)
    assert rc == 1
    assert "table users: table" in out  # only live: the tree applied nothing here
    assert scratch_db.tables() == {"users"}  # no tracking table, no verify table


def test_drift_replays_exactly_the_applied_set_even_with_a_gap(scratch_db, tree):
    for i in (1, 2, 3):
        tree.table_pair(f"app/00{i}_t{i}", f"t{i}")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), to="app/001_t1", verbosity=0)
    assert rc == 0, err
    tree.table_pair("app/000_t0", "t0")  # arrives late and sorts first: pending, before the applied one
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), drift=True)
    assert rc == 0, out + err
    assert "Note: 1 migration(s) before the last applied one are not applied" in out


# -- where it shows ----------------------------------------------------------------------------


def test_status_shows_the_stored_result_and_marks_it_stale_after_an_edit(scratch_db, tree):
    tree.table_pair("a/001_t1", "t1")
    tree.pair("a/002_t2", "CREATE TABLE t2 (id int);\n", "")
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), verbosity=0)
    assert rc == 1
    stored = VerifyStore(scratch_db.connection).read()
    assert {k: v.result for k, v in stored.items()} == {"a/001_t1": "exact", "a/002_t2": "not exact"}
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree))
    assert " [ ] 001_t1" in out and "verified exact" in out and "verified not exact" in out
    tree.write("a/001_t1_down.sql", "DROP TABLE t1; -- edited\n")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    entries = {e["id"]: e for e in json.loads(out)["migrations"]}
    assert (
        entries["a/001_t1"]["verify"]["result"] == "exact" and entries["a/001_t1"]["verify"]["stale"] is True
    )
    assert entries["a/002_t2"]["verify"] == {
        "result": "not exact",
        "stale": False,
        "verified_at": entries["a/002_t2"]["verify"]["verified_at"],
        "findings": 3,
    }


# -- the snapshot module -----------------------------------------------------------------------


def test_incremental_snapshots_equal_full_ones_through_renames_and_drops(scratch_db):
    connection = scratch_db.connection
    scratch_db.sql(
        "CREATE TYPE color AS ENUM ('red'); CREATE TABLE a (id serial PRIMARY KEY, c color);"
        "CREATE TABLE b (id int REFERENCES a(id)); CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql "
        "AS $$BEGIN RETURN NEW; END$$; CREATE TRIGGER t BEFORE INSERT ON b FOR EACH ROW EXECUTE FUNCTION f();"
        "INSERT INTO a (c) VALUES ('red')"
    )
    previous = snapshot.take(connection, row_counts=True)
    steps = [
        "ALTER TABLE a RENAME TO a2",
        "ALTER TYPE color RENAME TO colour",
        "ALTER TYPE colour ADD VALUE 'blue'",
        "ALTER FUNCTION f() RENAME TO g",
        "ALTER TABLE b DROP CONSTRAINT b_id_fkey",
        "DROP TRIGGER t ON b",
        "COMMENT ON TABLE b IS 'bee'",
        "TRUNCATE a2 CASCADE",
        "CREATE SCHEMA s; CREATE TABLE s.x (y int)",
        "ALTER SCHEMA s RENAME TO s2",
        "DROP TABLE b",
        "ALTER TABLE a2 ALTER COLUMN c SET NOT NULL",
    ]
    for sql in steps:
        scratch_db.sql(sql)
        incremental = snapshot.take(connection, row_counts=True, previous=previous)
        full = snapshot.take(connection, row_counts=True)
        assert incremental.objects == full.objects, sql
        assert incremental.rows == full.rows, sql
        assert snapshot.digest(incremental) == snapshot.digest(full)
        assert snapshot.diff(previous, incremental), sql  # every step changes something
        # diff compares only the groups read again; comparing every object gives the same
        whole = snapshot.diff(
            snapshot.Snapshot(previous.objects, previous.rows), snapshot.Snapshot(full.objects, full.rows)
        )
        assert snapshot.diff(previous, incremental) == whole, sql
        previous = incremental


def test_snapshot_leaves_out_nixmig_tables_and_digest_is_stable(scratch_db, tree):
    tree.table_pair("a/001_t1", "t1")
    empty = snapshot.take(scratch_db.connection)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), verbosity=0)
    assert rc == 0, err
    after = snapshot.take(scratch_db.connection)
    assert [(d.kind, d.name, d.change) for d in snapshot.diff(empty, after)] == [
        ("sequence", "public.t1_id_seq", "added"),
        ("table", "public.t1", "added"),
        ("column", "public.t1.id", "added"),
        ("constraint", "public.t1.t1_pkey", "added"),
        ("index", "public.t1_pkey", "added"),
    ]
    assert not [k for k in after.objects if "migrations" in k[1]]
    assert snapshot.digest(after) == snapshot.digest(snapshot.take(scratch_db.connection))
    assert snapshot.digest(after) != snapshot.digest(empty)


# -- the Nixopus tree ----------------------------------------------------------------------------

NIXOPUS_NOT_EXACT = {
    "auth/001_create_users": "down leaves extension `uuid-ossp` behind",
    "organizations/004_create_organization": "the down fails: ",
    "applications/014_change_domain_referencing": "the down fails: ",
    "rbac/033_remove_rbac_tables": "down does not restore column `organization_users.role_id`",
    "extensions/041_add_media_category": "the down file extensions/041_add_media_category_down.sql is empty",
    "applications/043_drop_domain_from_applications": "down does not restore column `applications.domain`",
}


def test_nixopus_tree_round_trips(nixopus_db, nixopus_dir):
    report, err, rc = verify_json(nixopus_db, nixopus_dir)
    assert rc == 1
    results = by_id(report)
    not_exact = {mid for mid, m in results.items() if m["result"] == "not exact"}
    assert not_exact == set(NIXOPUS_NOT_EXACT)
    for mid, start in NIXOPUS_NOT_EXACT.items():
        assert messages(results[mid])[0].startswith(start), (mid, messages(results[mid]))
    irreversible = {mid for mid, m in results.items() if m["result"] == "irreversible"}
    assert len(irreversible) == 13 and "applications/040_add_draft_status" in irreversible
    assert report["counts"] == {
        "exact": 36,
        "warning": 0,
        "not exact": 6,
        "irreversible": 13,
        "failed": 0,
        "not run": 0,
    }


def test_long_identities_are_not_cut_to_63_characters(scratch_db):
    scratch_db.sql(
        "CREATE TABLE notification_preferences (user_id int UNIQUE, category text, channel text, "
        "UNIQUE (user_id, category, channel))"
    )
    snap = snapshot.take(scratch_db.connection)
    assert snap.names("constraint") == [
        "public.notification_preferences.notification_preferences_user_id_category_channel_key",
        "public.notification_preferences.notification_preferences_user_id_key",
    ]


@pytest.mark.django_db
def test_admin_shows_the_stored_result_per_record_and_marks_edits_stale(admin_client, tree, settings):
    from django.db import connection

    from nixmig import api
    from nixmig.recorder import Recorder
    from nixmig.verify import MigrationResult

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.table_pair("a/001_t1", "t1")
    tree.table_pair("a/002_t2", "t2")
    loaded = api.load_tree(tree.path)
    recorder = Recorder(connection)
    recorder.ensure_schema(recorder.read())
    for migration in loaded.migrations:
        recorder.record_applied(migration)
    VerifyStore(connection).save(
        [
            MigrationResult(loaded.get("a/001_t1"), "exact"),
            MigrationResult(loaded.get("a/002_t2"), "not exact"),
        ]
    )
    tree.write("a/002_t2_down.sql", "DROP TABLE t2 CASCADE;\n")  # edited after it was verified
    html = admin_client.get("/admin/nixmig/migrationrecord/").content.decode()
    assert '<td class="field-verify_result">exact</td>' in html
    assert '<td class="field-verify_result">not exact (stale)</td>' in html


def test_verify_database_url_puts_the_scratch_database_on_that_server(scratch_db, tree, settings):
    tree.table_pair("a/001_t1", "t1")
    settings.NIXMIG = {**settings.NIXMIG, "VERIFY_DATABASE_URL": scratch_db.url}
    report, err, rc = verify_json(scratch_db, tree)
    assert rc == 0, err
    assert [m["result"] for m in report["migrations"]] == ["exact"]
    assert not [name for name in scratch_databases(scratch_db) if name.endswith("_server")]


def test_sigterm_drops_the_scratch_database_and_exits_2(scratch_db, tree):
    import signal
    import time

    tree.table_pair("a/001_t1", "t1")
    tree.pair("a/002_slow", "SELECT pg_sleep(20);\n", "SELECT 1;\n")
    proc = scratch_db.popen("sqlmigrate_verify", "--dir", str(tree))
    pattern = f"nixmig\\_verify\\_{proc.pid}\\_%%"
    deadline = time.monotonic() + 120  # start-up and the Django baseline come first (slow on a busy machine)
    while not scratch_db.sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'BEGIN;%%pg_sleep%%'"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert scratch_db.sql("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern])
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10  # the running pg_sleep(20) was cancelled, not waited for
    assert proc.returncode == 2, err
    assert "Interrupted; the scratch database was dropped" in err
    assert scratch_db.sql("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern]) == []
