"""Shared fixtures: a fresh real PostgreSQL database per test, and migration trees on disk.

The server is the one ``project.settings`` uses: DATABASE_URL when set, otherwise the
embedded PostgreSQL. Every test that needs a database gets its own, created from
template0 and dropped afterwards, registered as a Django alias and reachable from
subprocesses through ``DATABASE_URL``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
NIXOPUS = ROOT.parent / "shared" / "corpora" / "nixopus"


def _url(settings: dict, name: str) -> str:
    host = settings.get("HOST") or ""
    host = quote(host, safe="") if host.startswith("/") else host
    user = settings.get("USER") or ""
    password = f":{quote(settings['PASSWORD'], safe='')}" if settings.get("PASSWORD") else ""
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{name}"


class ScratchDB:
    """A database of its own for one test."""

    def __init__(self, alias: str, name: str, settings: dict):
        self.alias = alias
        self.name = name
        self.settings = settings
        self.url = _url(settings, name)

    @property
    def connection(self):
        return connections[self.alias]

    def sql(self, query: str, params=None):
        """Run a query in autocommit; return all rows (or None)."""
        with self.connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else None

    def value(self, query: str, params=None):
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def tables(self, schema: str = "public") -> set[str]:
        return {r[0] for r in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])}

    def records(self, table: str = "migrations") -> list[tuple]:
        return self.sql(f'SELECT module, name FROM "{table}" ORDER BY id')

    def run(self, command: str, *args, **options) -> tuple[str, str, int]:
        """call_command with this database; return (stdout, stderr, exit code)."""
        out, err = io.StringIO(), io.StringIO()
        if command != "sqlmigrate_new":  # the one command without --database: it only writes files
            options.setdefault("database", self.alias)
        try:
            call_command(command, *args, stdout=out, stderr=err, **options)
            rc = 0
        except CommandError as exc:
            err.write(str(exc))
            rc = exc.returncode
        return out.getvalue(), err.getvalue(), rc

    def env(self, **extra) -> dict:
        env = dict(os.environ, DATABASE_URL=self.url, PYTHONUNBUFFERED="1")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def manage(
        self, *args, timeout: float = 120, env: dict | None = None, **popen
    ) -> subprocess.CompletedProcess:
        """Run ``python manage.py ...`` against this database in a subprocess."""
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            **popen,
        )

    def popen(self, *args, env: dict | None = None, **popen) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Name pytest-django's test database per process, so two suites on one server don't collide."""
    from django.conf import settings

    for alias, db in settings.DATABASES.items():
        db.setdefault("TEST", {})["NAME"] = f"test_nixmig_{os.getpid()}_{alias}"


@pytest.fixture
def scratch_db(django_db_blocker):
    """Yield a fresh, empty database on the test server, dropped afterwards."""
    name = f"nixmig_t_{uuid.uuid4().hex[:12]}"
    alias = name
    with django_db_blocker.unblock():
        base = connections["default"].settings_dict
        admin = connections["default"]
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        settings = dict(base, NAME=name)
        settings["TEST"] = dict(base.get("TEST") or {}, NAME=name)
        connections.settings[alias] = settings
        db = ScratchDB(alias, name, settings)
        try:
            yield db
        finally:
            connections[alias].close()
            del connections[alias]
            del connections.settings[alias]
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TreeDir:
    """A migrations directory under tmp_path, written file by file."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def write(self, relpath: str, text: str = "", *, raw: bytes | None = None) -> Path:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            target.write_bytes(raw)
        else:
            target.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return target

    def pair(self, migration: str, up: str, down: str | None = "") -> None:
        """Write ``<module>/<NNN>_<name>`` as an up file and (unless None) a down file."""
        self.write(f"{migration}_up.sql", up)
        if down is not None:
            self.write(f"{migration}_down.sql", down)

    def table_pair(self, migration: str, table: str) -> None:
        self.pair(migration, f"CREATE TABLE {table} (id serial PRIMARY KEY);\n", f"DROP TABLE {table};\n")

    def __str__(self) -> str:
        return str(self.path)


@pytest.fixture
def tree(tmp_path) -> TreeDir:
    return TreeDir(tmp_path / "migrations_sql")


@pytest.fixture
def nixopus_dir() -> Path:
    if not NIXOPUS.is_dir():
        pytest.skip(
            f"the Nixopus corpus is not at {NIXOPUS} (it lives in the shared folder beside the repository)"
        )
    return NIXOPUS


@pytest.fixture
def nixopus_db(scratch_db, nixopus_dir):
    """A fresh database on a server that can run the Nixopus files."""
    if not scratch_db.value("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'"):
        pytest.skip(
            "this PostgreSQL has no uuid-ossp extension, which the Nixopus files create; run these tests "
            "with DATABASE_URL set to a server with contrib, e.g. Debian's PostgreSQL 15"
        )
    return scratch_db
