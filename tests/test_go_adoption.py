"""Databases the Nixopus Go migrator made: nixmig adopts them, and the Go migrator keeps working afterwards.

``GoMigrator`` sends exactly the SQL of the Go migrator (nixopus api/internal/storage/migration.go,
through bun): ``CREATE TABLE IF NOT EXISTS migrations (...)``, ``SELECT`` of its three columns,
every pending file in ONE transaction, each followed by ``INSERT (name, applied_at)``, and
``DELETE ... WHERE name = ?`` to roll back. It runs on a connection of its own, like the Go process.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from nixmig import api, lint
from nixmig.plan import AppliedRecord, resolve
from nixmig.tree import load_tree

GO_DDL = (
    "CREATE TABLE IF NOT EXISTS migrations "
    "(id BIGSERIAL PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
)


class GoError(Exception):
    pass


class GoMigrator:
    """The Nixopus Go migrator, reduced to the SQL it sends."""

    def __init__(self, url: str, directory, *, up_to: int | None = None):
        self.conn = psycopg.connect(url, autocommit=True)
        self.up: dict[str, str] = {}
        self.down: dict[str, str] = {}
        # filepath.Walk reads in lexical order; files are keyed by bare name, so the last one read wins.
        for path in sorted(Path(directory).rglob("*.sql")):
            if path.name.endswith("_up.sql"):
                self.up[path.name[: -len("_up.sql")]] = path.read_text()
            elif path.name.endswith("_down.sql"):
                self.down[path.name[: -len("_down.sql")]] = path.read_text()
        if up_to is not None:  # the tree as it stood at an older release
            self.up = {n: sql for n, sql in self.up.items() if int(n.split("_")[0]) <= up_to}
        self.order = sorted(self.up, key=lambda n: int(n.split("_")[0]))  # sorted by ID only

    def applied(self) -> list[str]:
        rows = self.conn.execute("SELECT id, name, applied_at FROM migrations ORDER BY id ASC").fetchall()
        return [name for _, name, _ in rows]

    def migrate_up(self) -> list[str]:
        self.conn.execute(GO_DDL)
        done = set(self.applied())
        ran = []
        self.conn.execute("BEGIN")
        for name in self.order:
            if name in done:
                continue
            self.conn.execute(self.up[name])  # no arguments: the simple query protocol, as bun sends it
            self.conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (%s, %s)",
                [name, datetime.now(UTC)],
            )
            ran.append(name)
        self.conn.execute("COMMIT")
        return ran

    def migrate_down(self) -> str:
        rows = self.conn.execute("SELECT id, name, applied_at FROM migrations ORDER BY id ASC").fetchall()
        if not rows:
            raise GoError("no migrations to roll back")
        name = rows[-1][1]
        if name not in self.up:
            raise GoError(f"could not find migration file for {name}")
        if not self.down.get(name):
            raise GoError(f"no down migration available for {name}")
        self.conn.execute("BEGIN")
        self.conn.execute(self.down[name])
        self.conn.execute("DELETE FROM migrations WHERE name = %s", [name])
        self.conn.execute("COMMIT")
        return name

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def go(scratch_db):
    migrators = []

    def make(directory, **options) -> GoMigrator:
        migrator = GoMigrator(scratch_db.url, directory, **options)
        migrators.append(migrator)
        return migrator

    yield make
    for migrator in migrators:
        migrator.close()


def go_rows(db) -> list[tuple]:
    return db.sql("SELECT id, name, applied_at FROM migrations ORDER BY id")


def columns(db) -> set[str]:
    return {
        r[0]
        for r in db.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'migrations'")
    }


def status_json(db, directory) -> dict:
    out, err, rc = db.run("sqlmigrate_status", dir=str(directory), json=True)
    assert rc == 0, err
    return json.loads(out)


# -- adopting ---------------------------------------------------------------------------------------


def test_rows_the_go_migrator_wrote_count_as_applied_and_only_the_rest_is_applied(
    nixopus_db, nixopus_dir, go
):
    ran = go(nixopus_dir, up_to=20).migrate_up()
    rows = go_rows(nixopus_db)
    assert len(rows) == len(ran) == 22

    data = status_json(nixopus_db, nixopus_dir)
    assert data["summary"] == {
        "applied": 22,
        "pending": 33,
        "changed": 0,
        "missing": 0,
        "partly_applied": 0,
        "partly_rolled_back": 0,
    }
    assert not [p for p in data["problems"] if p["level"] == "error"]
    assert columns(nixopus_db) == {"id", "name", "applied_at"}  # status changes nothing

    with lint.skipped():  # the Nixopus files after 020 drop tables and columns in use: lint refuses them
        result = api.migrate_up(directory=nixopus_dir, database=nixopus_db.alias)

    tree = load_tree(nixopus_dir)
    assert result.ids == [m.id for m in tree.migrations if m.number > 20]
    assert go_rows(nixopus_db)[:22] == rows  # id, name and applied_at of every Go row kept
    assert columns(nixopus_db) == {"id", "name", "applied_at", "module", "checksum", "execution_ms"}
    adopted = nixopus_db.sql(
        "SELECT name, module, checksum FROM migrations WHERE id <= %s ORDER BY id", [rows[-1][0]]
    )
    by_name = {m.name: m for m in tree.migrations}
    assert adopted == [(name, by_name[name].module, by_name[name].checksum) for _, name, _ in rows]
    assert len(nixopus_db.records()) == 55
    assert (
        nixopus_db.value("SELECT indexdef FROM pg_indexes WHERE indexname = 'migrations_module_name_key'")
        == "CREATE UNIQUE INDEX migrations_module_name_key ON public.migrations USING btree (module, name)"
    )


def test_a_database_the_go_migrator_fully_migrated_is_adopted_without_running_anything(
    nixopus_db, nixopus_dir, go
):
    go(nixopus_dir).migrate_up()
    rows = go_rows(nixopus_db)
    tables = nixopus_db.tables()

    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))

    assert rc == 0, err
    assert out == "No migrations to apply.\n"
    assert go_rows(nixopus_db) == rows and len(rows) == 55
    assert nixopus_db.tables() == tables
    assert nixopus_db.value("SELECT count(*) FROM migrations WHERE module IS NULL OR checksum IS NULL") == 0
    assert status_json(nixopus_db, nixopus_dir)["summary"] == {
        "applied": 55,
        "pending": 0,
        "changed": 0,
        "missing": 0,
        "partly_applied": 0,
        "partly_rolled_back": 0,
    }


def test_a_bare_name_that_files_in_two_modules_share_is_refused_until_its_module_is_recorded(
    scratch_db, tree, go
):
    tree.pair("auth/001_init", "CREATE TABLE auth_init (id int);\n", "DROP TABLE auth_init;\n")
    tree.pair("billing/001_init", "CREATE TABLE billing_init (id int);\n", "DROP TABLE billing_init;\n")
    tree.pair("billing/002_more", "CREATE TABLE billing_more (id int);\n", "DROP TABLE billing_more;\n")
    assert go(tree.path).migrate_up() == ["001_init", "002_more"]
    assert scratch_db.tables() == {
        "migrations",
        "billing_init",
        "billing_more",
    }  # Go only knew billing's 001_init

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))

    assert rc == 1
    assert (
        "row 1 names '001_init' without a module, and files of that name exist in 2 modules (auth/001_init, "
        "billing/001_init)" in err
    )
    assert "most likely billing/001_init ran and auth/001_init never did" in err
    assert columns(scratch_db) == {"id", "name", "applied_at"}
    assert scratch_db.tables() == {"migrations", "billing_init", "billing_more"}
    problems = status_json(scratch_db, tree)["problems"]
    assert [(p["level"], p["code"]) for p in problems] == [
        ("warning", "duplicate_number"),  # auth/001_init and billing/001_init
        ("error", "ambiguous_record"),
    ]

    (fix,) = re.findall(
        r'(ALTER TABLE "migrations" ADD COLUMN IF NOT EXISTS module VARCHAR; '
        r"UPDATE \"migrations\" SET module = '\w+' WHERE id = 1;)",
        err,
    )
    scratch_db.sql(fix)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), allow_out_of_order=True)

    assert rc == 0, err
    assert "Applying auth/001_init... OK" in out
    assert scratch_db.records() == [("billing", "001_init"), ("billing", "002_more"), ("auth", "001_init")]


def test_duplicate_rows_for_one_name_are_refused_until_the_later_one_is_deleted(scratch_db, tree, go):
    tree.pair("auth/001_users", "CREATE TABLE IF NOT EXISTS users (id int);\n", "DROP TABLE users;\n")
    tree.pair("auth/002_tokens", "CREATE TABLE tokens (id int);\n", "DROP TABLE tokens;\n")
    first, second = go(tree.path, up_to=1), go(tree.path, up_to=1)
    first.migrate_up()
    second.conn.execute(
        "INSERT INTO migrations (name, applied_at) VALUES ('001_users', now())"
    )  # lost the race

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))

    assert rc == 1
    assert "The tracking table records auth/001_users twice (rows 1 and 2)" in err
    assert "tokens" not in scratch_db.tables()
    assert columns(scratch_db) == {"id", "name", "applied_at"}

    (fix,) = re.findall(r'DELETE FROM "migrations" WHERE id = 2;', err)
    scratch_db.sql(fix)
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))

    assert rc == 0, err
    assert scratch_db.records() == [("auth", "001_users"), ("auth", "002_tokens")]


def test_documented_query_deletes_every_later_duplicate_of_a_go_table(scratch_db, tree, go):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("auth/002_tokens", "tokens")
    go(tree.path).migrate_up()
    scratch_db.sql(
        "INSERT INTO migrations (name, applied_at) VALUES ('001_users', now()), ('002_tokens', now()), "
        "('001_users', now())"
    )
    docs = (Path(__file__).resolve().parent.parent / "docs" / "nixopus.md").read_text()
    (bulk,) = re.findall(r"^DELETE FROM migrations AS later .*?;$", docs, re.M | re.S)

    scratch_db.sql(bulk)

    assert scratch_db.sql("SELECT id, name FROM migrations ORDER BY id") == [
        (1, "001_users"),
        (2, "002_tokens"),
    ]
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree))
    assert rc == 0, err
    assert scratch_db.records() == [("auth", "001_users"), ("auth", "002_tokens")]


def test_two_bare_rows_for_a_name_two_modules_share_are_one_ambiguous_row_and_one_duplicate(tree):
    tree.table_pair("auth/001_init", "auth_init")
    tree.table_pair("billing/001_init", "billing_init")
    at = datetime(2025, 1, 1, tzinfo=UTC)
    records = [AppliedRecord(1, "001_init", None, at), AppliedRecord(2, "001_init", None, at)]

    status = resolve(load_tree(tree.path), records, table="ops.migrations")
    problems = [p for p in status.problems if p.code != "duplicate_number"]  # the files share 001

    assert [(p.code, p.level) for p in problems] == [
        ("ambiguous_record", "error"),
        ("duplicate_record", "error"),
    ]
    assert """UPDATE "ops"."migrations" SET module = 'billing' WHERE id = 1;""" in problems[0].message
    assert "records 001_init twice (rows 1 and 2)" in problems[1].message
    assert 'DELETE FROM "ops"."migrations" WHERE id = 2;' in problems[1].message
    assert status.legacy == ()


# -- running the Go migrator (or an older nixmig) afterwards ------------------------------------------


def test_go_migrator_keeps_working_after_nixmig_upgraded_its_table(nixopus_db, nixopus_dir, go):
    go(nixopus_dir, up_to=20).migrate_up()
    out, err, rc = nixopus_db.run(
        "sqlmigrate_up", dir=str(nixopus_dir), to="users/030_create_user_preferences"
    )
    assert rc == 0, err
    assert "execution_ms" in columns(nixopus_db)

    ran = go(nixopus_dir).migrate_up()  # e.g. an old release of the API rolled out again

    assert ran == [
        "031_add_terminal_permissions",
        "032_add_dashboard_permissions",
        "033_remove_rbac_tables",
        "034_add_labels_to_applications",
        "034_add_extensions_feature_flag",
        "035_add_extensions_to_audit",
        "036_create_extensions",
        "037_add_extension_type",
        "038_add_parent_extension_id",
        "039_add_extension_logs",
        "040_add_draft_status",
        "041_add_family_id_to_applications",
        "041_add_media_category",
        "042_create_application_domains",
        "042_increase_description_length",
        "043_drop_domain_from_applications",
        "043_add_featured_column",
        "043_create_health_checks",
        "044_set_featured_extensions",
    ]
    data = status_json(nixopus_db, nixopus_dir)
    assert data["summary"] == {
        "applied": 55,
        "pending": 0,
        "changed": 0,
        "missing": 0,
        "partly_applied": 0,
        "partly_rolled_back": 0,
    }
    assert not [p for p in data["problems"] if p["level"] == "error"]

    assert go(nixopus_dir).migrate_down() == "044_set_featured_extensions"
    assert status_json(nixopus_db, nixopus_dir)["summary"]["pending"] == 1
    rows = go_rows(nixopus_db)

    out, err, rc = nixopus_db.run("sqlmigrate_up", dir=str(nixopus_dir))

    assert rc == 0, err
    assert "Applying extensions/044_set_featured_extensions... OK" in out
    assert go_rows(nixopus_db)[:-1] == rows
    assert (
        nixopus_db.value("SELECT count(*) FROM migrations WHERE module IS NULL") == 0
    )  # the Go rows adopted
    assert go(nixopus_dir).migrate_up() == []  # and the Go migrator still sees everything as applied


def test_go_migrator_can_take_over_a_table_nixmig_created(scratch_db, tree, go):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("billing/002_invoices", "invoices")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), to="auth/001_users")
    assert rc == 0, err

    assert go(tree.path).migrate_up() == ["002_invoices"]

    assert scratch_db.sql("SELECT module, name, checksum IS NULL FROM migrations ORDER BY id") == [
        ("auth", "001_users", False),
        (None, "002_invoices", True),
    ]
    assert status_json(scratch_db, tree)["summary"]["applied"] == 2
    assert go(tree.path).migrate_down() == "002_invoices"
    assert go(tree.path).migrate_down() == "001_users"
    assert scratch_db.tables() == {"migrations"}
    assert status_json(scratch_db, tree)["summary"]["pending"] == 2


def test_an_older_nixmig_without_execution_ms_keeps_reading_and_writing_the_table(scratch_db, tree):
    tree.table_pair("auth/001_users", "users")
    tree.table_pair("auth/002_tokens", "tokens")
    tree.table_pair("auth/003_keys", "keys")
    checksums = {m.name: m.checksum for m in load_tree(tree.path).migrations}
    # The table as a nixmig from before execution_ms left it, with one migration applied.
    scratch_db.sql(
        "CREATE TABLE migrations (id BIGSERIAL PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ "
        "NOT NULL DEFAULT now(), module VARCHAR, checksum VARCHAR(64)); "
        "CREATE UNIQUE INDEX migrations_module_name_key ON migrations (module, name); "
        "CREATE TABLE users (id serial PRIMARY KEY)"
    )
    scratch_db.sql(
        "INSERT INTO migrations (name, module, checksum, applied_at) VALUES ('001_users', 'auth', %s, now())",
        [checksums["001_users"]],
    )
    rows = go_rows(scratch_db)

    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree), to="auth/002_tokens")

    assert rc == 0, err
    assert go_rows(scratch_db)[:1] == rows
    assert "execution_ms" in columns(scratch_db)
    # The older nixmig runs again: it names its own columns, so the added one does not disturb it.
    scratch_db.sql("CREATE TABLE keys (id serial PRIMARY KEY)")
    scratch_db.sql(
        "INSERT INTO migrations (name, module, checksum, applied_at) VALUES ('003_keys', 'auth', %s, now())",
        [checksums["003_keys"]],
    )
    assert scratch_db.sql("SELECT module, name FROM migrations ORDER BY id") == [
        ("auth", "001_users"),
        ("auth", "002_tokens"),
        ("auth", "003_keys"),
    ]

    data = status_json(scratch_db, tree)
    assert data["summary"] == {
        "applied": 3,
        "pending": 0,
        "changed": 0,
        "missing": 0,
        "partly_applied": 0,
        "partly_rolled_back": 0,
    }
    assert [m["execution_ms"] is None for m in data["migrations"]] == [True, False, True]
