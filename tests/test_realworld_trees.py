"""Real migration trees of public projects (../shared/corpora/realworld and the Nixopus corpus), as a
new user meets them: import with the tool's --from, sqlmigrate_up on an empty database with lint on,
the schema compared with a plain psql replay of the original up files, and sqlmigrate_lint --all.

Each tree uses two databases (nixmig's and psql's), made once for all the tests of that tree. The
replay runs psql (each file in one transaction, as its tool does, except the files the tool runs
outside one); without a psql binary it replays through psycopg's simple protocol instead.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from nixmig import lint, snapshot
from nixmig.tree import load_tree
from tests.conftest import NIXOPUS, ROOT, _url

REALWORLD = ROOT.parent / "shared" / "corpora" / "realworld"
PSQL = shutil.which("psql") or (
    "/usr/lib/postgresql/15/bin/psql" if Path("/usr/lib/postgresql/15/bin/psql").exists() else None
)
HATCHET_FIRST_GO_DEPENDENT = "20260424205453"  # v1_0_100 reads a table a Go migration made
GOLANG_MIGRATE_TABLE = (
    "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
)


# -- the original up files, chosen and ordered as each tool does (not through nixmig's readers) -------


@dataclass
class UpFile:
    name: str
    sql: str
    transaction: bool  # the tool runs it in one transaction


def _goose_up(text: str) -> str:
    out, on = [], False
    for line in text.splitlines(keepends=True):
        mark = re.match(r"\s*--\s*\+goose\s+(\w+)", line)
        if mark:
            on = {"Up": True, "Down": False}.get(mark.group(1), on)
            continue
        if on:
            out.append(line)
    return "".join(out)


def goose_files(root: Path, before: str | None = None) -> list[UpFile]:
    files = sorted(root.glob("*.sql"), key=lambda p: int(p.name.split("_", 1)[0]))
    return [
        UpFile(p.name, _goose_up(text), not re.search(r"\+goose\s+NO\s+TRANSACTION", text, re.I))
        for p in files
        if before is None or p.name < before
        for text in [p.read_text(encoding="utf-8")]
    ]


def golang_migrate_files(root: Path) -> list[UpFile]:
    files = sorted(root.glob("*.up.sql"), key=lambda p: int(p.name.split("_", 1)[0]))
    return [UpFile(p.name, p.read_text(encoding="utf-8"), True) for p in files]


def popx_files(root: Path) -> list[UpFile]:
    chosen: dict[str, dict[str, Path]] = {}
    for p in root.glob("*.up.sql"):
        m = re.match(r"^(\d+)_[^.]+((?:\.[a-z0-9]+)*)\.up\.sql$", p.name)
        parts = [x for x in m.group(2).split(".") if x and x != "autocommit"]
        dialect = parts[0] if parts else "all"
        if dialect in ("postgres", "all"):
            chosen.setdefault(m.group(1), {})[dialect] = p
    out = []
    for version in sorted(chosen):
        p = chosen[version].get("postgres") or chosen[version]["all"]
        out.append(UpFile(p.name, p.read_text(encoding="utf-8"), ".autocommit." not in p.name))
    return out


def flyway_files(root: Path) -> list[UpFile]:
    files = [p for p in root.rglob("V*__*.sql")]
    files.sort(key=lambda p: tuple(int(x) for x in p.name[1:].split("__")[0].split(".")))
    return [
        UpFile(p.name, text, "CONCURRENTLY" not in text.upper())
        for p in files
        for text in [p.read_text(encoding="utf-8")]
    ]


def nixopus_files(root: Path) -> list[UpFile]:
    ups = sorted(root.rglob("*_up.sql"), key=lambda p: (p.name[:3], str(p.relative_to(root))))
    return [UpFile(str(p.relative_to(root)), p.read_text(encoding="utf-8"), True) for p in ups]


@dataclass
class Corpus:
    name: str
    tool: str | None  # --from of sqlmigrate_import; None: already a nixmig tree
    files: list[UpFile]
    source: Path
    prelude: str | None = None  # what the tool itself creates first (golang-migrate's table)
    lint_all: lint.Report | None = None
    nixmig_db: object = None
    psql_db: object = None
    tree_dir: Path | None = None
    up: tuple = ()
    diff: list = field(default_factory=list)


def corpus(name: str, tmp: Path) -> Corpus:
    if name == "nixopus":
        if not NIXOPUS.is_dir():
            pytest.skip(f"the Nixopus corpus is not at {NIXOPUS}")
        return Corpus(name, None, nixopus_files(NIXOPUS), NIXOPUS)
    root = REALWORLD / name
    if not root.is_dir():
        pytest.skip(
            f"the {name} corpus is not at {root} (it lives in the shared folder beside the repository)"
        )
    if name == "kratos":
        return Corpus(name, "popx", popx_files(root), root)
    if name == "harbor":
        return Corpus(name, "golang-migrate", golang_migrate_files(root), root, prelude=GOLANG_MIGRATE_TABLE)
    if name == "openfga":
        return Corpus(name, "goose", goose_files(root), root)
    if name == "conductor":
        return Corpus(name, "flyway", flyway_files(root), root)
    assert name == "hatchet"
    source = tmp / "hatchet-src"  # the SQL migrations before the first one that needs a Go migration's effect
    source.mkdir()
    for p in root.glob("*.sql"):
        if p.name < HATCHET_FIRST_GO_DEPENDENT:
            shutil.copy(p, source / p.name)
    return Corpus(name, "goose", goose_files(root, before=HATCHET_FIRST_GO_DEPENDENT), source)


# -- databases -------------------------------------------------------------------------------------------


class Database:
    def __init__(self, alias: str, name: str, settings: dict):
        self.alias, self.name, self.settings = alias, name, settings
        self.url = _url(settings, name)

    @property
    def connection(self):
        return connections[self.alias]

    def sql(self, query: str):
        with self.connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall() if cursor.description else None

    def run(self, command: str, *args, **options) -> tuple[str, str, int]:
        out, err = io.StringIO(), io.StringIO()
        try:
            call_command(command, *args, stdout=out, stderr=err, database=self.alias, **options)
            return out.getvalue(), err.getvalue(), 0
        except CommandError as exc:
            return out.getvalue(), err.getvalue() + str(exc), exc.returncode


def create_database(admin, purpose: str) -> Database:
    name = f"nixmig_rw_{purpose}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    base = admin.settings_dict
    settings = dict(base, NAME=name)
    settings["TEST"] = dict(base.get("TEST") or {}, NAME=name)
    connections.settings[name] = settings
    return Database(name, name, settings)


def drop_database(admin, db: Database) -> None:
    connections[db.alias].close()
    del connections[db.alias]
    del connections.settings[db.alias]
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def replay(db: Database, files: list[UpFile], workdir: Path) -> str:
    """Apply the up files in order as their tool would, with psql (or psycopg); return the error, if any."""
    if PSQL:
        script = ["\\set ON_ERROR_STOP 1"]
        for i, f in enumerate(files):
            path = workdir / f"{i:04d}.sql"
            path.write_text(f.sql, encoding="utf-8")
            script += ["BEGIN;", f"\\i {path}", "COMMIT;"] if f.transaction else [f"\\i {path}"]
        (workdir / "replay.psql").write_text("\n".join(script) + "\n", encoding="utf-8")
        done = subprocess.run(
            [PSQL, "-X", "-q", "-o", "/dev/null", "-d", db.url, "-f", str(workdir / "replay.psql")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return "" if done.returncode == 0 else done.stderr
    import psycopg
    from pglast import parser

    with psycopg.connect(db.url, autocommit=True) as conn:
        for f in files:
            try:
                if f.transaction:
                    conn.execute(
                        f.sql.encode()
                    )  # no parameters: the simple protocol, one implicit transaction
                else:
                    for s in parser.split(f.sql):
                        conn.execute(s.encode())
            except psycopg.Error as exc:
                return f"{f.name}: {exc}"
    return ""


# -- one fixture per tree: import, up with lint on, replay, compare ---------------------------------------

TREES = ["kratos", "harbor", "hatchet", "openfga", "conductor", "nixopus"]


@pytest.fixture(scope="module", params=TREES)
def applied(request, tmp_path_factory, django_db_blocker):
    tmp = tmp_path_factory.mktemp(request.param)
    c = corpus(request.param, tmp)
    with django_db_blocker.unblock():
        admin = connections["default"]
        if c.name == "nixopus":
            with admin.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
                if not cursor.fetchone()[0]:
                    pytest.skip("this PostgreSQL has no uuid-ossp extension, which the Nixopus files create")
        c.nixmig_db, c.psql_db = create_database(admin, "nixmig"), create_database(admin, "psql")
        try:
            if c.tool is None:
                c.tree_dir = c.source
            else:
                c.tree_dir = tmp / "migrations_sql"
                out, err, rc = c.nixmig_db.run(
                    "sqlmigrate_import", str(c.source), tool=c.tool, dir=str(c.tree_dir), module=c.name
                )
                assert rc == 0, err
            for db in (c.nixmig_db, c.psql_db):
                if c.prelude:
                    db.sql(c.prelude)
            c.up = c.nixmig_db.run("sqlmigrate_up", dir=str(c.tree_dir), verbosity=1)
            replay_dir = tmp / "replay"
            replay_dir.mkdir()
            error = replay(c.psql_db, c.files, replay_dir)
            assert not error, f"psql could not replay {c.name}: {error}"
            ours = snapshot.take(c.nixmig_db.connection)
            theirs = snapshot.take(c.psql_db.connection, exclude_tables=())
            c.diff = [d for d in snapshot.diff(theirs, ours) if not d.frozen]
            c.lint_all = lint.lint_tree(load_tree(c.tree_dir), settings=lint.Settings.default())
            yield c
        finally:
            drop_database(admin, c.nixmig_db)
            drop_database(admin, c.psql_db)


def test_up_applies_every_migration_with_lint_on(applied):
    out, err, rc = applied.up
    assert rc == 0, err
    assert "Lint skipped" not in out
    count = applied.nixmig_db.sql("SELECT count(*) FROM migrations")[0][0]
    assert count == len(applied.files)


def test_schema_equals_a_psql_replay_of_the_original_up_files(applied):
    assert [f"{d.change} {d.kind} {d.name}" for d in applied.diff] == []


def test_lint_all_parses_every_statement(applied):
    report = applied.lint_all
    assert report.files == len(applied.files)
    unparsed = [f"{f.file}:{f.line}" for f in report.findings if f.rule == "unparsed-statement"]
    assert unparsed == []
