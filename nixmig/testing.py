"""Test databases with the SQL schema: Django's test runner, pytest-django, xdist and --keepdb.

Django creates a test database and then calls ``migrate`` on it (``create_test_db``; even
with ``TEST["MIGRATE"] = False``, which only disables migration modules and syncs the
models). nixmig's ``migrate`` command asks :func:`test_database_creation` whether it is that
call; if so it hands the work to :func:`prepare_test_database`, which

* on a fresh test database: builds, once per tree, a template database
  ``<test name>_nixmig_<hash>`` (Django's migrations, then every SQL migration, then
  ``CREATE DATABASE <template> TEMPLATE <test database>``). Later test databases are a
  spare copy of the template that the previous run made in a background thread while its
  tests ran (taken with a rename, whatever the number of migrations), or, when none is
  ready, ``CREATE DATABASE <test> TEMPLATE <template>``. The hash covers every up file's
  checksum, the Django migration files and the models synced without migrations, so any
  change builds a new template; templates of other hashes (and their copies) are dropped.
  An advisory lock on the maintenance database makes concurrent runs (pytest-xdist
  workers) build a template once. Nobody can connect to a template; its catalog snapshot
  (``nixmig.snapshot``) is recorded when it is built and every copy is checked against it.
* on a kept database (``--keepdb`` / ``--reuse-db``): runs Django's migrations and then the
  pending SQL migrations, as ``migrate`` + ``sqlmigrate_up`` would.

Why the ``migrate`` command and not a ``post_migrate`` handler or a patched
``DatabaseCreation``: both test runners reach it through ``call_command("migrate")``, it
runs exactly once per test database, it lets nixmig skip Django's migrations when a
template already holds them, and it patches nothing of Django. ``post_migrate`` also
fires on every ``flush`` (each ``TransactionTestCase``) and only after Django's
migrations have run.

The engine reports progress through a callback and never prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from django.core.management.base import CommandError
from django.db import DatabaseError, connections

from . import api, conf, databases
from .exceptions import MigrationFailed, NixmigError
from .lint import skipped
from .sqlnames import ident

if TYPE_CHECKING:
    from django.db.models import Model

Callback = Callable[..., None]

TEMPLATE_MARK = "nixmig test template"
# PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes.
MAX_NAME = 63
HASH_LENGTH = 12
SPARE_ID = 6


class TestDatabaseError(CommandError):
    """The test database could not get the SQL schema; the tests did not run."""

    __test__ = False  # not a test class, whatever pytest's name patterns say


def test_database_creation() -> dict | None:
    """Return the arguments of Django's ``create_test_db`` when the caller runs inside it, else None.

    Django has no hook or flag for "this ``migrate`` creates a test database"; the call
    stack says it exactly (a test that calls ``migrate`` itself is not inside it).
    """
    from django.db.backends.base.creation import BaseDatabaseCreation

    code = BaseDatabaseCreation.create_test_db.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            found = frame.f_locals
            return {"verbosity": found.get("verbosity", 1), "keepdb": bool(found.get("keepdb", False))}
        frame = frame.f_back
    return None


test_database_creation.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Outcome:
    """What ``prepare_test_database`` did to one test database."""

    action: str  # "spare", "cloned", "built", "updated", "applied", "django-only"
    template: str | None = None
    applied: int = 0
    seconds: float = 0.0


def _quote(connection, name: str) -> str:
    return ident(name)


def _has_relation(connection, name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def is_fresh(connection) -> bool:
    """Return True if neither Django's nor nixmig's tracking table is in the database."""
    return not _has_relation(connection, "django_migrations") and not _has_relation(connection, conf.table())


def base_name(test_name: str) -> str:
    """Return the test database's name without pytest-xdist's worker suffix (``_gw0``), so workers share templates."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if re.fullmatch(r"gw\d+", worker) and test_name.endswith("_" + worker):
        return test_name[: -len(worker) - 1]
    return test_name


def template_prefix(test_name: str) -> str:
    """Return the prefix of every template (and spare copy) built for this test database: ``<name>_nixmig_``."""
    longest = f"_nixmig_{'0' * HASH_LENGTH}_s{'0' * SPARE_ID}"
    base = base_name(test_name).encode()[: MAX_NAME - len(longest)].decode(errors="ignore")
    return f"{base}_nixmig_"


def template_name(test_name: str, key: str) -> str:
    return template_prefix(test_name) + key[:HASH_LENGTH]


# --- what a test database is made of -------------------------------------------------------------


def sql_key(tree) -> str:
    """Return the hash of the SQL tree: every up file's id and checksum, and the tracking table's name."""
    digest = hashlib.sha256(f"{conf.table()}\n".encode())
    for migration in tree.migrations:
        digest.update(f"{migration.id}\x1f{migration.checksum}\n".encode())
    return digest.hexdigest()


def django_key(connection) -> str:
    """Return the hash of what Django puts in a test database.

    Django's migration graph with each migration file's contents; the models that
    ``migrate --run-syncdb`` creates without migrations (as the SQL it would send); the
    installed models; the Django version and the test settings that shape the database.
    """
    import django
    from django.apps import apps
    from django.db import router
    from django.db.migrations.loader import MigrationLoader

    digest = hashlib.sha256()

    def add(*parts) -> None:
        digest.update(("\x1f".join(str(p) for p in parts) + "\n").encode())

    test = connection.settings_dict.get("TEST") or {}
    add(
        "nixmig test template",
        1,
        django.get_version(),
        test.get("CHARSET"),
        test.get("TEMPLATE"),
        test.get("MIGRATE", True),
    )
    loader = MigrationLoader(connection, ignore_no_migrations=True, load=True)
    for key in sorted(loader.graph.nodes):
        add("django", *key, _source_digest(loader.graph.nodes[key]))
    synced: list[type[Model]] = []
    for app_config in apps.get_app_configs():
        if app_config.label in loader.migrated_apps:
            continue
        synced.extend(
            model
            for model in router.get_migratable_models(app_config, connection.alias)
            if model._meta.can_migrate(connection)
        )
    if synced:
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            for model in synced:
                editor.create_model(model)
        for statement in editor.collected_sql:
            add("syncdb", statement)
    add("models", *sorted(m._meta.label for m in apps.get_models(include_auto_created=True)))
    return digest.hexdigest()


def combine(sql: str, django_part: str) -> str:
    return hashlib.sha256(f"{sql}:{django_part}".encode()).hexdigest()


def fingerprint(connection, tree) -> str:
    """Return the template hash: the SQL tree's and Django's parts together."""
    return combine(sql_key(tree), django_key(connection))


def files_stamp(directory) -> str:
    """Return a hash of every file's path, size, mtime, ctime and inode under ``directory`` (no file is read).

    Any write to a file changes its ctime, so an equal stamp means equal files: the SQL
    tree's hash recorded with the stamp can be reused without reading thousands of files.
    """
    digest = hashlib.sha256()
    pending = [("", os.fspath(directory))]
    while pending:
        relative, path = pending.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = relative + entry.name
            if (
                entry.name == "__pycache__"
            ):  # the checksum cache's folder: not part of the tree (load_tree skips it)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((name + "/", entry.path))
                    continue
                st = entry.stat()
            except OSError:
                continue
            digest.update(
                f"{name}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1f{st.st_ctime_ns}\x1f{st.st_ino}\n".encode()
            )
    return digest.hexdigest()


def _source_digest(migration) -> str:
    module = sys.modules.get(type(migration).__module__)
    path = getattr(module, "__file__", None)
    if path:
        try:
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            pass
    return repr([type(op).__name__ for op in migration.operations]) + repr(migration.dependencies)


def snapshot_digest(connection) -> str:
    """Return the catalog snapshot's digest of the database ``connection`` is on."""
    from . import snapshot

    return snapshot.digest(snapshot.take(connection))


# --- the maintenance connection: lock, templates, CREATE / DROP / RENAME DATABASE ---------------------


@dataclass
class Entry:
    """A database of this test database's template family: a template, a spare copy or a copy in the making."""

    name: str
    key: str  # the first HASH_LENGTH characters of the template hash
    kind: str  # "template", "spare" (a verified copy, ready) or "work" (being made)
    fields: dict
    allowconn: bool


def _fields(comment: str | None) -> dict:
    if not comment or not comment.startswith(TEMPLATE_MARK):
        return {}
    return dict(re.findall(r"; (\w+) ([^;\s]+)", comment))


class Maintenance:
    """Database-level work on the test server, from a connection to its maintenance database."""

    def __init__(self, cursor, connection):
        self.cursor = cursor
        self.connection = connection  # the test database's connection (for quoting and settings)

    def q(self, name: str) -> str:
        return _quote(self.connection, name)

    def lock(self, key: str, *, wait: float, emit: Callback) -> None:
        """Take the session-level advisory lock ``key``, polling (never blocking inside the server)."""
        started = time.monotonic()
        delay = 0.02
        told = False
        while True:
            self.cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key])
            if self.cursor.fetchone()[0]:
                return
            waited = time.monotonic() - started
            if waited >= wait:
                raise NixmigError(
                    f"Another test run held the test-template lock ({key}) for more than {wait:.0f} s; it is "
                    "probably building the template. Wait for it to finish, or raise NIXMIG['LOCK_WAIT']."
                )
            if not told:
                emit("template_wait", key=key)
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def unlock(self, key: str) -> None:
        self.cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])

    def family(self, prefix: str) -> dict[str, Entry]:
        """Return the templates, spare copies and copies in the making whose names start with ``prefix``."""
        self.cursor.execute(
            "SELECT datname, shobj_description(oid, 'pg_database'), datallowconn FROM pg_database "
            "WHERE left(datname, length(%s)) = %s",
            [prefix, prefix],
        )
        shape = re.compile(
            re.escape(prefix) + f"([0-9a-f]{{{HASH_LENGTH}}})(?:_([swx])[0-9a-f]{{{SPARE_ID}}})?"
        )
        found = {}
        for name, comment, allowconn in self.cursor.fetchall():
            match = shape.fullmatch(name)
            if match:
                kind = {"s": "spare", "w": "work", "x": "trash", None: "template"}[match.group(2)]
                found[name] = Entry(name, match.group(1), kind, _fields(comment), allowconn)
        return found

    def drop(self, name: str, *, force: bool = False) -> bool:
        """Drop database ``name``; return False if it is in use (it is left alone)."""
        try:
            self.cursor.execute(
                f"DROP DATABASE IF EXISTS {self.q(name)}" + (" WITH (FORCE)" if force else "")
            )
            return True
        except DatabaseError:
            return False

    def create(self, name: str, template: str | None = None, suffix: str = "") -> None:
        """CREATE DATABASE, retrying while another session is still leaving the template."""
        sql = f"CREATE DATABASE {self.q(name)} " + (f"TEMPLATE {self.q(template)}" if template else suffix)
        for attempt in range(40):
            try:
                self.cursor.execute(sql)
                return
            except DatabaseError as exc:
                cause = getattr(exc, "__cause__", None)
                if getattr(cause, "sqlstate", None) != "55006" or attempt == 39:  # object_in_use
                    raise
                time.sleep(0.05 * (attempt + 1))

    def rename(self, name: str, new: str) -> None:
        self.cursor.execute(f"ALTER DATABASE {self.q(name)} RENAME TO {self.q(new)}")

    def allow_connections(self, name: str, allow: bool) -> None:
        self.cursor.execute(
            f"ALTER DATABASE {self.q(name)} WITH ALLOW_CONNECTIONS {'true' if allow else 'false'}"
        )

    def finish_template(self, name: str, fields: dict) -> None:
        """Record what the template holds, and close it to connections.

        Nobody can connect to (and so change) the template; CREATE DATABASE ... TEMPLATE
        never fails because a session is connected to it.
        """
        self.set_fields(name, fields)
        self.allow_connections(name, False)

    def set_fields(self, name: str, fields: dict) -> None:
        text = TEMPLATE_MARK + "".join(f"; {k} {v}" for k, v in fields.items())
        self.cursor.execute(f"COMMENT ON DATABASE {self.q(name)} IS %s", [text])


def _close(connection) -> None:
    """Close the test database's connections so CREATE / DROP DATABASE can use it."""
    connection.close()
    close_pool = getattr(connection, "close_pool", None)
    if close_pool is not None:
        close_pool()


@contextlib.contextmanager
def _maintenance(connection) -> Iterator[Maintenance]:
    with connection._nodb_cursor() as cursor:
        yield Maintenance(cursor, connection)


# --- the public entry point ----------------------------------------------------------------------


def prepare_test_database(
    alias: str, django_migrate: Callable[[], object], *, progress: Callback | None = None
) -> Outcome:
    """Give the (just created or kept) test database of ``alias`` Django's migrations and the SQL tree.

    ``django_migrate`` runs Django's own ``migrate`` on it. Raises NixmigError with the
    message ``sqlmigrate_up`` would give; a fresh test database that failed is dropped.
    """
    emit = progress or (lambda event, **data: None)
    started = time.perf_counter()
    connection = connections[alias]
    if not conf.get("TEST_APPLY") or connection.vendor != "postgresql" or not databases.allows(alias):
        django_migrate()
        return Outcome("django-only", seconds=time.perf_counter() - started)
    directory = conf.migrations_dir()
    if not directory.is_dir() and not conf.get("MIGRATIONS_DIR"):
        django_migrate()  # a project without SQL migrations
        return Outcome("django-only", seconds=time.perf_counter() - started)
    if not directory.is_dir():
        _tree()  # NIXMIG['MIGRATIONS_DIR'] names a missing folder: the tree's own error

    name = connection.settings_dict["NAME"]
    # Stat the tree's files in a thread while the database is asked what it holds (it costs
    # a few ms per thousand files; more where system calls are slow).
    stamp = _Background(files_stamp, directory)
    if not is_fresh(connection):
        outcome = _update_kept(alias, connection, _tree(), django_migrate, emit)
        if outcome is not None:
            outcome.seconds = time.perf_counter() - started
            return outcome
        # an edited applied migration and TEST_REBUILD_CHANGED: start again from an empty database
        emit("rebuild", database=name)
        _close(connection)
        with _maintenance(connection) as db:
            db.drop(name, force=True)
            db.create(name, suffix=connection.creation.sql_table_creation_suffix())

    try:
        if not conf.get("TEST_TEMPLATE"):
            django_migrate()
            result = _migrate_up(database=alias, tree=_tree(), progress=emit)
            outcome = Outcome("applied", applied=len(result.done))
        else:
            outcome = _from_template(alias, connection, directory, django_migrate, emit, stamp=stamp.result())
    except BaseException as exc:
        _close(connection)
        with _maintenance(connection) as db:  # nothing half-applied is left for the next run
            dropped = db.drop(name, force=True)
        if dropped and isinstance(exc, NixmigError):
            exc.test_hint = "The test database was dropped; run the tests again once the SQL is fixed."
        raise
    outcome.seconds = time.perf_counter() - started
    return outcome


def _migrate_up(**options):
    """Apply the tree to a test database without linting it: the plan check guards deploys, not tests."""
    with skipped():
        return api.migrate_up(**options)


def _tree():
    tree = api.load_tree()
    tree.raise_for_errors()
    return tree


def _update_kept(alias, connection, tree, django_migrate, emit) -> Outcome | None:
    """Bring a kept test database up to date; return None if it must be rebuilt (TEST_REBUILD_CHANGED)."""
    django_migrate()
    with api.session(alias, tree=tree, progress=emit, command="test database") as s:  # one lock, one read
        changed = s.status().with_state("changed")
        if changed and conf.get("TEST_REBUILD_CHANGED"):
            return None
        try:
            with skipped():  # the plan check guards deploys, not test databases
                result = s.up()
        except NixmigError as exc:
            if changed:
                exc.test_hint = (
                    "With a kept test database you can also set NIXMIG['TEST_REBUILD_CHANGED'] = True "
                    "to re-create it, or run the tests without --keepdb."
                )
            elif isinstance(exc, MigrationFailed):
                exc.test_hint = (
                    "The kept test database keeps what ran before it; fix the SQL and run the tests again "
                    "to go on from there."
                )
            raise
    return Outcome("updated", applied=len(result.done))


class _Background(threading.Thread):
    """Run ``function(*args)`` in a thread; ``result()`` waits for it (and raises what it raised)."""

    def __init__(self, function, *args):
        super().__init__(name="nixmig-stamp", daemon=True)
        self.function, self.args = function, args
        self.value = self.error = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.function(*self.args)
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def _from_template(
    alias, connection, directory, django_migrate, emit, *, stamp: str, attempt: int = 0
) -> Outcome:
    name = connection.settings_dict["NAME"]
    prefix = template_prefix(name)
    lock_key = f"nixmig:test-template:{prefix}"
    django_part = django_key(connection)
    _close(connection)
    with _maintenance(connection) as db:
        db.lock(lock_key, wait=float(conf.get("LOCK_WAIT")), emit=emit)
        try:
            family = db.family(prefix)
            # The SQL tree's hash, without reading the files when a template recorded the same stamp.
            sql = next(
                (
                    e.fields["sql"]
                    for e in family.values()
                    if e.kind == "template" and e.fields.get("files") == stamp and "sql" in e.fields
                ),
                None,
            )
            tree = None
            if sql is None:
                tree = _tree()
                sql = sql_key(tree)
            key = combine(sql, django_part)
            template = prefix + key[:HASH_LENGTH]
            entry = family.get(template)
            if entry is None or entry.fields.get("hash") != key or entry.allowconn:  # not ready
                tree = tree or _tree()
                return _build(
                    alias,
                    connection,
                    db,
                    tree,
                    family,
                    template,
                    {"hash": key, "sql": sql, "files": stamp},
                    django_migrate,
                    emit,
                )
            if entry.fields.get("files") != stamp:
                db.set_fields(template, {**entry.fields, "files": stamp})
            spare = next(
                (
                    e.name
                    for e in sorted(family.values(), key=lambda e: e.name)
                    if e.kind == "spare" and e.key == key[:HASH_LENGTH]
                ),
                None,
            )
            # The empty test database Django made is renamed away and dropped in the background
            # (DROP DATABASE waits for a checkpoint on some servers: a second on PostgreSQL 15 here).
            aside = f"{template}_x{uuid.uuid4().hex[:SPARE_ID]}"
            trash = aside if _set_aside(db, name, aside) else None
            if spare is not None:  # a copy made and checked in the background: renaming it costs nothing
                db.rename(spare, name)
                db.allow_connections(name, True)
        finally:
            db.unlock(lock_key)
        if spare is None:
            # No spare: copy the template now (outside the lock, so xdist workers copy side by side).
            try:
                db.create(name, template)
            except DatabaseError:
                if attempt:
                    raise
                # another run with a different tree dropped it as stale just now: start again
                if trash is not None:
                    db.drop(trash, force=True)
                db.create(name, suffix=connection.creation.sql_table_creation_suffix())
                return _from_template(
                    alias, connection, directory, django_migrate, emit, stamp=stamp, attempt=1
                )
    expected = entry.fields.get("snapshot")
    # someone changed the template since it was built
    if spare is None and expected not in (None, "-") and snapshot_digest(connection) != expected:
        if attempt:
            raise NixmigError(
                f"The test template {template} was changed after it was built and rebuilding it "
                "did not help; drop it by hand (DROP DATABASE) and run the tests again."
            )
        emit("template_changed", template=template)
        _close(connection)
        with _maintenance(connection) as db:
            db.lock(lock_key, wait=float(conf.get("LOCK_WAIT")), emit=emit)
            try:
                db.drop(template)
            finally:
                db.unlock(lock_key)
            db.drop(name, force=True)
            if trash is not None:
                db.drop(trash, force=True)
            db.create(name, suffix=connection.creation.sql_table_creation_suffix())
        return _from_template(alias, connection, directory, django_migrate, emit, stamp=stamp, attempt=1)
    _make_spares(connection, template, key, expected, lock_key, trash=trash)
    emit("template_spare" if spare else "template_cloned", template=template)
    return Outcome("spare" if spare else "cloned", template=template)


def _build(
    alias, connection, db: Maintenance, tree, family, template, fields, django_migrate, emit
) -> Outcome:
    """Build the template from the (empty) test database, under the lock; drop the family's other members."""
    for other in sorted(family):
        if db.drop(other):
            emit("template_dropped", template=other)
    emit("template_build", template=template, migrations=len(tree.migrations))
    django_migrate()
    result = _migrate_up(database=alias, tree=tree, progress=emit)
    fields["snapshot"] = snapshot_digest(connection)
    _close(connection)
    db.create(template, connection.settings_dict["NAME"])
    db.finish_template(template, fields)
    emit("template_built", template=template)
    _make_spares(
        connection,
        template,
        fields["hash"],
        fields["snapshot"],
        f"nixmig:test-template:{template_prefix(connection.settings_dict['NAME'])}",
    )
    return Outcome("built", template=template, applied=len(result.done))


# --- spare copies, made in the background while the tests run ---------------------------------------

_spare_threads: list[threading.Thread] = []
spare_seconds: list[float] = []  # how long each background copy took (for the benchmark)


def _set_aside(db: Maintenance, name: str, trash: str) -> bool:
    """Rename database ``name`` to ``trash`` (or drop it when it can't be renamed); return True if renamed."""
    try:
        db.rename(name, trash)
        return True
    except DatabaseError:
        db.drop(name, force=True)
        return False


def _make_spares(
    connection, template: str, key: str, digest: str | None, lock_key: str, *, trash: str | None = None
) -> None:
    """Start copying the template into NIXMIG['TEST_SPARES'] spare databases for the next test database.

    ``trash`` (an empty database set aside) is dropped by a background thread too.
    """
    count = int(conf.get("TEST_SPARES") or 0)
    settings_dict = dict(connection.settings_dict)
    if trash is not None:
        thread = threading.Thread(
            target=_discard,
            args=(type(connection), settings_dict, trash),
            name="nixmig-test-discard",
            daemon=False,
        )
        thread.start()
        _spare_threads.append(thread)
    for _ in range(count):
        thread = threading.Thread(
            target=_spare,
            args=(type(connection), settings_dict, template, key, digest),
            name="nixmig-test-spare",
            daemon=False,
        )
        thread.start()
        _spare_threads.append(thread)


def wait_for_spares(timeout: float | None = None) -> None:
    """Wait until the spare copies started by this process are made (benchmarks, tests)."""
    while _spare_threads:
        _spare_threads.pop().join(timeout)


def _discard(wrapper_class, settings_dict: dict, name: str) -> None:
    """Drop database ``name`` (best effort: a later build drops what is left of the family)."""
    maintenance = wrapper_class(dict(settings_dict), alias="nixmig_spare")
    try:
        with _maintenance(maintenance) as db:
            db.drop(name, force=True)
    except Exception:
        pass
    finally:
        maintenance.close()


def _spare(wrapper_class, settings_dict: dict, template: str, key: str, digest: str | None) -> None:
    """Copy ``template`` to a work database, check its snapshot, then publish it as a spare (best effort)."""
    suffix = uuid.uuid4().hex[:SPARE_ID]
    work = f"{template}_w{suffix}"
    spare = f"{template}_s{suffix}"
    maintenance = wrapper_class(dict(settings_dict), alias="nixmig_spare")
    started = time.perf_counter()
    try:
        with _maintenance(maintenance) as db:
            db.create(work, template)
        if digest not in (None, "-"):
            copy = wrapper_class(dict(settings_dict, NAME=work), alias="nixmig_spare")
            try:
                intact = snapshot_digest(copy) == digest
            finally:
                copy.close()
            if not intact:  # the template was changed: the next run must not use it
                with _maintenance(maintenance) as db:
                    db.drop(work, force=True)
                    db.drop(template)
                return
        with _maintenance(maintenance) as db:
            db.allow_connections(work, False)
            db.rename(work, spare)
        spare_seconds.append(time.perf_counter() - started)
    except Exception:  # the template was dropped meanwhile, the server went away: no spare this time
        try:
            with _maintenance(maintenance) as db:
                db.drop(work, force=True)
        except Exception:
            pass
    finally:
        maintenance.close()


# --- an empty database for tests that run migrations themselves ----------------------------------


@dataclass
class EmptyDatabase:
    """A fresh database on the test server, registered as a Django alias."""

    alias: str
    name: str
    settings: dict

    @property
    def connection(self):
        return connections[self.alias]


@contextlib.contextmanager
def empty_database(using: str = "default", *, prefix: str = "nixmig_empty_") -> Iterator[EmptyDatabase]:
    """Create an empty database (from template0) beside ``using``'s; yield it as a Django alias; drop it after.

    For tests that apply migrations themselves, e.g.
    ``api.migrate_up(database=db.alias, directory=...)``.
    """
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    base = connections[using]
    with _maintenance(base) as db:
        db.cursor.execute(f"CREATE DATABASE {db.q(name)} TEMPLATE template0")
    settings = dict(base.settings_dict, NAME=name)
    settings["TEST"] = dict(base.settings_dict.get("TEST") or {}, NAME=name)
    databases.register(name, settings)
    try:
        yield EmptyDatabase(name, name, settings)
    finally:
        databases.forget(name)
        with _maintenance(base) as db:
            db.drop(name, force=True)
