"""The Python API: what the management commands call, and what scripts and tests can call.

Twins of the Nixopus Go migrator's API: ``load_tree`` (LoadMigrations), ``migrate_up``
(ApplyMigrations), ``rollback`` / ``rollback_all`` (RollbackMigration(s)),
``applied_migrations`` (GetAppliedMigrations), ``reset_migrations`` (ResetMigrations).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import psycopg
from django.db import DatabaseError, connections

from . import conf, databases, signals
from .exceptions import DatabaseUnavailable, NixmigError, PlanError, TreeError
from .executor import Executor, RunOptions
from .lock import MigrationLock
from .plan import (
    APPLIED,
    CHANGED,
    PARTIAL,
    PARTLY_APPLIED,
    PARTLY_ROLLED_BACK,
    PENDING,
    AppliedRecord,
    Entry,
    Status,
    describe_partial,
    plan_down,
    plan_up,
    resolve,
)
from .recorder import NIXMIG_COLUMNS, REQUIRED_COLUMNS, Recorder, TableState
from .sqlnames import check_schema, ident
from .tree import ERROR, INFO, WARNING, Migration, Problem, Tree
from .tree import load_tree as _load_tree

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.postgresql.base import DatabaseWrapper

Callback = Callable[..., None]
_P = ParamSpec("_P")
_R = TypeVar("_R")

# The time of a row a session wrote and has not read back yet (replaced before anyone sees it).
_NOT_READ = datetime.min.replace(tzinfo=UTC)

# Callables run on every plan under the lock, before anything is sent (see register_plan_check).
_plan_checks: list[Callable[..., None]] = []


def register_plan_check(check: Callable[..., None]) -> None:
    """Run ``check(direction=, entries=, prepared=, connection=, fake=, emit=)`` on every plan before it runs.

    A check refuses a plan by raising a NixmigError; it runs under the migration lock, on the
    plan as re-read there, so what it approved is exactly what runs.
    """
    if check not in _plan_checks:
        _plan_checks.append(check)


@dataclass
class RunResult:
    """What a run did."""

    direction: str
    planned: list[Entry]
    done: list[Entry] = field(default_factory=list)
    seconds: float = 0.0
    database: str = "default"
    fake: bool = False
    skipped: int = 0  # migrations left out of the plan: already applied (up) or kept (down)
    schema: str | None = None  # the schema of a schema target

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.done]


def _unavailable(exc: DatabaseError, database: str) -> DatabaseUnavailable:
    """Describe a database error that escaped nixmig's own handling (a connection cut while waiting
    for the lock, or during a catalog query) as one paragraph that says what it means for the records."""
    from .pgerrors import connection_lost, describe

    text, sqlstate = describe(exc)
    what = (
        "The connection to database {db!r} was lost"
        if connection_lost(exc, sqlstate)
        else "A query nixmig sent to database {db!r} failed"
    ).format(db=database)
    return DatabaseUnavailable(
        f"{what}: {text.rstrip('.')}. Each migration and its record are one transaction (a no-transaction "
        "file keeps its progress), so the tracking table still says exactly what ran; sqlmigrate_status "
        "shows it. Run the command again once the database answers."
    )


def _database_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a database error that escapes nixmig's own handling into one paragraph (see _unavailable)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except DatabaseError as exc:
            raise _unavailable(exc, str(kwargs.get("database", "default"))) from None

    return wrapper


def load_tree(directory: str | Path | None = None) -> Tree:
    """Read the migration tree (default: NIXMIG['MIGRATIONS_DIR']), through the checksum cache."""
    directory = directory if directory is not None else conf.migrations_dir()
    return _load_tree(
        directory,
        allow_empty=bool(conf.get("ALLOW_EMPTY")),
        unique_numbers=bool(conf.get("UNIQUE_NUMBERS")),
        checksum_cache=conf.checksum_cache(directory),
        max_file_bytes=conf.max_file_bytes(),
    )


def connection_for(database: str = "default") -> DatabaseWrapper:
    """Return the connection of ``database``, connected; raise a clear error when it can't be."""
    databases.require_known([database])
    connection = connections[database]
    if connection.vendor != "postgresql":
        raise NixmigError(f"Database {database!r} is {connection.vendor}; nixmig works with PostgreSQL only.")
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        params = connection.settings_dict
        where = params.get("HOST") or "the local socket"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"Can't connect to database {database!r} ({params.get('NAME')} on {where}"
            f"{':' + str(params['PORT']) if params.get('PORT') else ''}): {first}. Check DATABASE_URL or "
            "settings.DATABASES and that the server is running."
        ) from None
    # Vendor "postgresql": Django's PostgreSQL backend or one built on it (PostGIS, ...), told apart
    # by its vendor as always, not by its class.
    return cast("DatabaseWrapper", connection)


def _state(
    connection: BaseDatabaseWrapper, tree: Tree, table: str | None = None, schema: str | None = None
) -> tuple[Recorder, TableState, Status]:
    recorder = Recorder(connection, table, schema)
    state = recorder.read()
    return recorder, state, _resolve(tree, state, recorder)


def _resolve(tree: Tree, state: TableState, recorder: Recorder) -> Status:
    """Resolve the states, and describe partly run files by the lines of their statements."""
    current = resolve(tree, state.records, state.progress, table=recorder.table)
    partial = [e for e in current.entries if e.state in PARTIAL]
    if not partial:
        return current  # the usual case: no parser needed
    from .executor import resume_problem
    from .sqltext import examine

    detailed = {}
    for e in partial:
        sql_file = e.files.up if e.state == PARTLY_APPLIED else e.files.down
        prep = examine(sql_file)[0] if sql_file is not None else None
        assert e.progress is not None, f"{e.id} is {e.state}: its progress row is what makes it so"
        detailed[e.id] = replace(
            e,
            statement_lines=tuple(st.line for st in prep.analysis.statements) if prep else (),
            edited=prep is None or resume_problem(e, prep, e.progress.direction) is not None,
        )
    old = {describe_partial(e): describe_partial(detailed[e.id]) for e in partial}
    return replace(
        current,
        entries=tuple(detailed.get(e.id, e) for e in current.entries),
        problems=tuple(replace(p, message=old.get(p.message, p.message)) for p in current.problems),
    )


@_database_errors
def status(
    *,
    directory: str | Path | None = None,
    database: str = "default",
    tree: Tree | None = None,
    create_table: bool = True,
    schema: str | None = None,
    leftovers: bool = True,
) -> Status:
    """Return every migration with its state, and the problems found.

    Creates the tracking table when it is missing (so a fresh database reads as 'all pending'),
    but only if the migration lock is free and the database is writable; it never waits.
    ``schema`` reads the tracking table of that schema (a schema-per-tenant target).
    ``leftovers=False`` leaves out the catalog's leftovers (see ``with_leftovers``).
    """
    tree = tree or load_tree(directory)
    connection = connection_for(database)
    require_schema(connection, schema)
    recorder, state, result = _state(connection, tree, schema=schema)
    if create_table and not state.exists and not connection.in_atomic_block:
        _try_create(connection, recorder)
    refused = refused_files(result.entries)
    if refused:
        result = replace(result, problems=result.problems + tuple(refused))
    return with_leftovers(result, connection, schema) if leftovers else result


def with_leftovers(result: Status, connection: BaseDatabaseWrapper, schema: str | None = None) -> Status:
    """Add to a status the catalog's leftovers of interrupted statements (one query)."""
    assert result.tree is not None
    found = _leftovers(connection, result.tree, schema)
    if not found:
        return result
    problems = tuple(
        Problem(
            f"{x.what}: left by a statement that runs outside a transaction and was interrupted or failed; "
            f"fix it with: {x.fix}",
            None,
            WARNING,
            "leftover",
        )
        for x in found
    )
    return replace(result, problems=result.problems + problems, leftovers=tuple(found))


def _leftovers(connection: BaseDatabaseWrapper, tree: Tree, schema: str | None) -> list:
    """INVALID and _ccnew/_ccold indexes and partitions pending detach on tables the tree's files name."""
    from .leftovers import catalog_leftovers

    def texts() -> Iterator[str]:
        for m in tree.migrations:
            for f in (m.up, m.down):
                if f is not None:
                    try:
                        yield f.text
                    except TreeError:  # an unreadable down file: status reports it elsewhere
                        continue

    with connection.cursor() as cursor:
        found = catalog_leftovers(cursor, texts(), schema)
    return found


def require_schema(connection: BaseDatabaseWrapper, schema: str | None, *, create: bool = False) -> None:
    """Raise a clear error when the schema of a schema target does not exist (or create it)."""
    if not schema:
        return
    check_schema(schema, "schema")
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", [schema])
        if cursor.fetchone()[0]:
            return
        if create:
            try:
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
                return
            except DatabaseError as exc:
                cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", [schema])
                if cursor.fetchone()[0]:
                    return  # another runner created it at the same moment
                first = str(exc).strip().splitlines()[0]
                raise NixmigError(
                    f"Can't create schema {schema!r} in database {connection.alias!r} ({first}); "
                    "nothing was run there. Create it as a role that may, or grant CREATE on the "
                    "database."
                ) from None
    raise NixmigError(
        f"Schema {schema!r} does not exist in database {connection.alias!r} "
        f"({connection.settings_dict.get('NAME')}); nothing was run there. Create it first, pass "
        "--create-schemas (create_schemas=True) to have nixmig create it, or remove it from the "
        "targets."
    )


def _try_create(connection: BaseDatabaseWrapper, recorder: Recorder) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s || current_database(), 0))",
                [f"nixmig:{recorder.table}:"],
            )
            if not cursor.fetchone()[0]:
                return  # another runner holds the lock and will create the table
            try:
                cursor.execute(recorder.create_sql())
            finally:
                cursor.execute(
                    "SELECT pg_advisory_unlock(hashtextextended(%s || current_database(), 0))",
                    [f"nixmig:{recorder.table}:"],
                )
    except DatabaseError:
        pass  # a read-only database or standby: status stays read-only


@_database_errors
def migrate_up(
    *,
    directory: str | Path | None = None,
    database: str = "default",
    to: str | None = None,
    fake: bool = False,
    atomic: bool = False,
    allow_changed: bool = False,
    allow_out_of_order: bool = False,
    lock_wait: float | None = None,
    progress: Callback | None = None,
    tree: Tree | None = None,
    schema: str | None = None,
    create_schema: bool = False,
) -> RunResult:
    """Apply pending migrations in order (all, or up to and including ``to``).

    ``tree`` reuses an already loaded tree (callers that run many times, such as verify).
    ``schema`` runs them in that schema of ``database`` (search_path, tracking table and lock
    of the schema); ``create_schema`` creates it when missing.
    """
    with session(
        database,
        tree=tree,
        directory=directory,
        schema=schema,
        create_schema=create_schema,
        lock_wait=lock_wait,
        progress=progress,
        command="sqlmigrate_up",
    ) as s:
        result = s.up(
            to, fake=fake, atomic=atomic, allow_changed=allow_changed, allow_out_of_order=allow_out_of_order
        )
    result.seconds = time.perf_counter() - s.opened_at
    return result


@_database_errors
def migrate_down(
    *,
    directory: str | Path | None = None,
    database: str = "default",
    steps: int | None = 1,
    to: str | None = None,
    everything: bool = False,
    fake: bool = False,
    lock_wait: float | None = None,
    progress: Callback | None = None,
    tree: Tree | None = None,
    schema: str | None = None,
) -> RunResult:
    """Roll back the most recently applied migrations (``steps``, down ``to`` one, or ``everything``)."""
    with session(
        database,
        tree=tree,
        directory=directory,
        schema=schema,
        lock_wait=lock_wait,
        progress=progress,
        command="sqlmigrate_down",
    ) as s:
        result = s.down(steps, to=to, everything=everything, fake=fake)
    result.seconds = time.perf_counter() - s.opened_at
    return result


@_database_errors
def plan(
    direction: str = "up",
    *,
    directory: str | Path | None = None,
    database: str = "default",
    schema: str | None = None,
    **options: Any,
) -> list[Entry]:
    """Return what ``migrate_up`` / ``migrate_down`` would run with these options, changing nothing."""
    tree = load_tree(directory)
    tree.raise_for_errors()
    current = status(tree=tree, database=database, create_table=False, schema=schema)
    entries = plan_up(current, **options) if direction == "up" else plan_down(current, **options)
    _prepare(tree, entries, direction, options.get("fake", False))
    return entries


@_database_errors
def preview(
    direction: str = "up",
    *,
    directory: str | Path | None = None,
    database: str = "default",
    fake: bool = False,
    atomic: bool = False,
    schema: str | None = None,
    **options: Any,
) -> list[tuple[Entry | None, list[str]]]:
    """Return, per migration, the exact queries ``migrate_up`` / ``migrate_down`` would send; send none.

    A first item with no entry holds the tracking table's creation when a run would create it.
    """
    tree = load_tree(directory)
    tree.raise_for_errors()
    connection = connection_for(database)
    require_schema(connection, schema)
    recorder, state, current = _state(connection, tree, schema=schema)
    entries = plan_up(current, **options) if direction == "up" else plan_down(current, fake=fake, **options)
    prepared = _prepare(tree, entries, direction, fake)
    out: list[tuple[Entry | None, list[str]]] = []
    if entries and not state.exists:
        out.append((None, ["BEGIN;", recorder.create_sql() + ";", "COMMIT;"]))
    elif entries and (state.needs_upgrade or current.legacy):
        out.append(
            (
                None,
                [
                    "-- the tracking table is upgraded first (module, checksum and execution_ms "
                    "columns; module and checksum of the Go migrator's rows)"
                ],
            )
        )
    out.extend(Executor(connection, recorder).preview(direction, entries, prepared, fake=fake, atomic=atomic))
    return out


def _prepare(tree: Tree, entries: list[Entry], direction: str, fake: bool) -> dict:
    """Check every file of the plan before anything runs; return them ready to send.

    Raises one TreeError listing every file the run would refuse, not just the first.
    """
    if fake or not entries:
        return {}  # before the import: a no-op up never loads the parser (pglast)
    from .sqltext import examine  # imported here: status never needs the parser

    prepared, refused = {}, []
    for e in entries:
        sql_file = e.files.up if direction == "up" else e.files.down
        if sql_file is None:
            continue
        prep, problems = examine(sql_file)
        prepared[e.id] = prep
        refused.extend(problems)
    if refused:
        listed = "\n".join(f"  - {p}" for p in refused)
        raise TreeError(
            f"Nothing was run: {len(refused)} problem(s) in the files of this run must be fixed "
            f"first:\n{listed}"
        )
    return prepared


# Status and the admin parse the files of pending migrations (for what a run would refuse, and to
# count lint findings) only up to this much SQL in all, about a second's work: beyond it they say so,
# as sqlmigrate_up checks every file before it sends anything and sqlmigrate_lint lints them.
STATUS_PARSE_BYTES = 2 * 1024 * 1024


def pending_bytes(entries: Sequence[Entry]) -> int:
    """Return the size on disk of the up and down files of unrecorded migrations (stat only, no read)."""
    total = 0
    for e in entries:
        if e.migration is None or e.record is not None:
            continue
        for sql_file in (e.migration.up, e.migration.down):
            if sql_file is not None:
                with contextlib.suppress(OSError):  # reading it will say what is wrong
                    total += os.stat(sql_file.path).st_size
    return total


def over_parse_budget(entries: Sequence[Entry]) -> Problem | None:
    """Return the note status gives instead of parsing pending files above STATUS_PARSE_BYTES, or None."""
    size = pending_bytes(entries)
    if size <= STATUS_PARSE_BYTES:
        return None
    return Problem(
        f"The files of the pending migrations hold {size / 1e6:.1f} MB of SQL, more than status parses "
        f"({STATUS_PARSE_BYTES // (1024 * 1024)} MiB), so they were not checked here for what a run would "
        "refuse, nor linted: sqlmigrate_up checks every file before it runs anything, and "
        "sqlmigrate_lint shows the lint findings.",
        None,
        INFO,
        "not_checked",
    )


def refused_files(entries: Sequence[Entry]) -> list[Problem]:
    """Return what a run would refuse in the files of pending migrations, as status problems.

    Up files of pending (and partly applied) migrations are checked as ``sqlmigrate_up`` would
    (errors); their down files as ``sqlmigrate_down`` would once they are applied (warnings).
    Only pending files are parsed, so status of a fully applied tree never loads the parser; above
    STATUS_PARSE_BYTES of them, none is, and one note says so.
    """
    todo = [e for e in entries if e.migration is not None and e.record is None]
    if not todo:
        return []
    too_big = over_parse_budget(todo)
    if too_big is not None:
        return [too_big]
    from .sqltext import examine

    out = []
    for e in todo:
        for sql_file, level in ((e.files.up, ERROR), (e.files.down, WARNING)):
            if sql_file is None:
                continue
            for message in examine(sql_file)[1]:
                out.append(Problem(message, sql_file.relpath, level, "refused"))
    return out


def _with_migration_signals(emit: Callback, database: str) -> Callback:
    """Wrap a progress callback so pre_migration / post_migration are sent around each migration."""

    def callback(event: str, **data: Any) -> None:
        if event == "start":
            signals.pre_migration.send(
                sender=RunResult,
                direction=data["direction"],
                database=database,
                migration_id=data["entry"].id,
                fake=data["fake"],
            )
        emit(event, **data)
        if event == "success":
            signals.post_migration.send(
                sender=RunResult,
                direction=data["direction"],
                database=database,
                migration_id=data["entry"].id,
                fake=data["fake"],
                ms=data["ms"],
            )

    return callback


class Session:
    """Several steps on one database under one migration lock, with one read of the tracking table.

    Made by :func:`session`; use it as a context manager. On entry it takes the migration lock
    and reads the tracking table once; each ``up()`` / ``down()`` then plans from the state it
    keeps in memory and updates that state from what ran (an up fetches only the rows it added,
    for their ids), so ``k`` steps cost ``O(k)`` queries, whatever the size of the tree. On exit,
    normal or by an exception, the lock is released.

    After a step fails, the session reads the tracking table again, so its state is the
    database's; a step after a lost connection raises instead (the lock went with it).
    """

    # Set on entry: the connection holding the lock, its tracking table, and the table as last read.
    connection: DatabaseWrapper
    recorder: Recorder
    _table: TableState

    def __init__(
        self,
        database: str,
        tree: Tree,
        *,
        schema: str | None = None,
        create_schema: bool = False,
        lock_wait: float | None = None,
        progress: Callback | None = None,
        command: str = "nixmig",
    ) -> None:
        self.database = database
        self.tree = tree
        self.schema = schema
        self.create_schema = create_schema
        self.lock_wait = lock_wait
        self.command = command
        self.emit = _with_migration_signals(progress or (lambda event, **data: None), database)
        self.opened_at = 0.0
        self._lock: MigrationLock | None = None
        self._raw: object = None  # the DB-API connection that holds the lock
        self._executor: Executor | None = None
        self._broken: str | None = None
        self._entries: list[Entry] = []
        self._position: dict[str, int] = {}
        self._problems: tuple[Problem, ...] = ()
        self._legacy: tuple[tuple[AppliedRecord, Migration], ...] = ()
        self._status: Status | None = None
        self._last_row_id = 0  # the highest tracking-table id seen: _fetch reads the rows after it
        self._unfetched: list[int] = []  # positions of entries applied here whose rows are not read yet
        # Indexes over the kept entries that let a step plan in time proportional to its plan:
        self._counts: Counter[str] = Counter()  # entries per state
        self._pending: list[int] = []  # positions of pending and partly applied entries, ascending
        self._order: list[int] = []  # positions of recorded entries, oldest row first
        self._errors = False  # a problem that refuses every plan (see Status.raise_for_errors)
        self._last_applied = -1  # position of the last entry (in run order) with a record

    # -- opening and closing -----------------------------------------------------------------

    def __enter__(self) -> Session:
        self.opened_at = time.perf_counter()
        self.tree.raise_for_errors()
        for problem in self.tree.problems:
            if problem.level == WARNING:
                self.emit("warning", message=problem.message)
        try:
            self.connection = connection_for(self.database)
            require_schema(self.connection, self.schema, create=self.create_schema)
            self.recorder = Recorder(self.connection, schema=self.schema)
            lock = MigrationLock(
                self.connection,
                self.recorder.table,
                wait=self.lock_wait,
                callback=self.emit,
                command=self.command,
            )
            lock.__enter__()
            self._lock, self._raw = lock, self.connection.connection
            try:
                self._read()  # under the lock: another runner may have applied everything
            except BaseException:
                self.__exit__(None, None, None)
                raise
            for problem in self._problems:
                if problem.code == "missing_file":
                    self.emit("warning", message=problem.message)
        except DatabaseError as exc:
            raise _unavailable(exc, self.database) from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(*exc_info)
        self._broken = self._broken or "it is closed"

    # -- the steps -----------------------------------------------------------------------------

    def status(self) -> Status:
        """Return every migration with its state, as the session knows it.

        Sends at most one query: the rows of migrations applied since the last call, for their
        ids and times.
        """
        self._usable()
        try:
            self._fetch()
        except DatabaseError as exc:
            self._after_failure()
            raise _unavailable(exc, self.database) from None
        return self._current()

    def up(
        self,
        to: str | None = None,
        *,
        fake: bool = False,
        atomic: bool = False,
        allow_changed: bool = False,
        allow_out_of_order: bool = False,
    ) -> RunResult:
        """Apply pending migrations in order (all, or up to and including ``to``); see ``migrate_up``."""
        return self._step("up", lambda: self._plan_up(to, allow_changed, allow_out_of_order), fake, atomic)

    def down(
        self, steps: int | None = 1, *, to: str | None = None, everything: bool = False, fake: bool = False
    ) -> RunResult:
        """Roll back the most recently applied migrations (``steps``, down ``to`` one, or ``everything``)."""
        return self._step("down", lambda: self._plan_down(steps, to, everything, fake), fake)

    def refresh(self) -> Status:
        """Read the tracking table again (after a change made outside the session) and return the status."""
        self._usable()
        try:
            self._read()
        except DatabaseError as exc:
            self._after_failure()
            raise _unavailable(exc, self.database) from None
        return self.status()

    # -- inside --------------------------------------------------------------------------------

    def _usable(self) -> None:
        if self._lock is not None and self.connection.connection is not self._raw:
            self._broken = "its connection was closed, and the migration lock with it"
        if self._broken or self._lock is None:
            raise NixmigError(
                f"This session on database {self.database!r} can't run more steps: "
                f"{self._broken or 'it is not open (use it as a context manager)'}. "
                "Open a new session; sqlmigrate_status shows what is applied."
            )

    def _plan_up(self, to: str | None, allow_changed: bool, allow_out_of_order: bool) -> list[Entry]:
        """``plan_up`` on the kept state, in time proportional to what it returns.

        The usual plan is read off the kept indexes; anything plan_up would refuse is left to
        plan_up itself, so the refusal and its message are exactly the one-call function's.
        """
        counts, target = self._counts, None
        if to is not None:
            target = self._position.get(to.strip().strip("/"))
        usual = not self._errors and not counts[PARTLY_ROLLED_BACK] and (allow_changed or not counts[CHANGED])
        if usual and (to is None or target is not None):
            end = len(self._entries) if target is None else target + 1
            chosen = [self._entries[p] for p in self._pending[: bisect.bisect_left(self._pending, end)]]
            if allow_out_of_order or not any(e.out_of_order for e in chosen):
                return chosen
        return plan_up(
            self._current(), to=to, allow_changed=allow_changed, allow_out_of_order=allow_out_of_order
        )

    def _plan_down(self, steps: int | None, to: str | None, everything: bool, fake: bool) -> list[Entry]:
        """``plan_down`` on the kept state, in time proportional to what it returns (see _plan_up)."""
        counts = self._counts
        if (
            steps is not None
            and steps >= 1
            and to is None
            and not everything
            and not self._errors
            and not counts[PARTLY_APPLIED]
            and not counts[PARTLY_ROLLED_BACK]
        ):
            chosen = [self._entries[p] for p in reversed(self._order[-steps:])]
            if fake or all(e.migration is not None and e.migration.reversible for e in chosen):
                return chosen
        return plan_down(self._current(), steps=steps, to=to, everything=everything, fake=fake)

    def _step(
        self, direction: str, make_plan: Callable[[], list[Entry]], fake: bool, atomic: bool = False
    ) -> RunResult:
        self._usable()
        started = time.perf_counter()
        try:
            if direction == "down":
                self._fetch()  # a rollback removes rows by id
            entries = make_plan()
            prepared = _prepare(self.tree, entries, direction, fake)
            for check in _plan_checks:  # e.g. the linter: may raise to refuse the plan; nothing has run yet
                check(
                    direction=direction,
                    entries=entries,
                    prepared=prepared,
                    connection=self.connection,
                    fake=fake,
                    emit=self.emit,
                    schema=self.schema,
                )
            result = RunResult(
                direction,
                entries,
                database=self.database,
                fake=fake,
                schema=self.schema,
                skipped=len(self._order) - len(entries)
                if direction == "down"
                else self._counts[APPLIED] + self._counts[CHANGED],
            )
            self.emit("plan", direction=direction, entries=entries, fake=fake)
            table = self._table
            if not entries:
                if not table.exists or table.needs_upgrade or self._legacy:
                    self._ensure_schema()  # adopt a Go migrator's table even with nothing to run
                result.seconds = time.perf_counter() - started
                return result
            self._ensure_schema()
        except DatabaseError as exc:  # nothing of the plan ran
            self._after_failure()
            raise _unavailable(exc, self.database) from None
        signals.pre_sqlmigrate.send(
            sender=RunResult, direction=direction, database=self.database, plan=entries, fake=fake
        )
        if self._executor is None:
            self._executor = Executor(self.connection, self.recorder, self.emit)
        try:
            result.done = self._executor.run(entries, prepared, RunOptions(direction, fake, atomic))
            self._after(direction, result.done)
        except BaseException as exc:
            self._after_failure()
            if isinstance(exc, DatabaseError):
                raise _unavailable(exc, self.database) from None
            raise
        finally:
            result.seconds = time.perf_counter() - started
        signals.post_sqlmigrate.send(
            sender=RunResult, direction=direction, database=self.database, result=result
        )
        return result

    def _current(self) -> Status:
        if self._status is None:
            self._status = Status(tuple(self._entries), self._problems, self._legacy, self.tree)
        return self._status

    def _fetch(self) -> None:
        """Fetch the rows of the migrations applied since the last fetch (one query), for their ids."""
        if not self._unfetched:
            return
        added = self.recorder.read_since(self._last_row_id)
        by_key = {(r.module, r.name): r for r in added}
        entries = self._entries
        if len(added) != len(self._unfetched) or any(
            (entries[p].module, entries[p].name) not in by_key for p in self._unfetched
        ):
            self._read()  # rows this session did not write: take the table as it is
            return
        for p in self._unfetched:
            entries[p] = replace(entries[p], record=by_key[(entries[p].module, entries[p].name)])
        self._last_row_id = added[-1].row_id
        self._unfetched = []
        self._status = None

    def _read(self) -> None:
        """Read the tracking table, resolve it against the tree and keep the result."""
        table = self.recorder.read()
        current = _resolve(self.tree, table, self.recorder)
        self._table = table
        self._unfetched = []
        self._entries = list(current.entries)
        self._position = {e.id: i for i, e in enumerate(self._entries)}
        self._problems, self._legacy, self._status = current.problems, current.legacy, current
        self._last_row_id = max((r.row_id for r in table.records), default=self._last_row_id)
        entries = self._entries
        self._last_applied = max((i for i, e in enumerate(entries) if e.record is not None), default=-1)
        self._counts = Counter(e.state for e in entries)
        self._pending = [i for i, e in enumerate(entries) if e.state in (PENDING, PARTLY_APPLIED)]
        self._order = sorted(
            (i for i, e in enumerate(entries) if e.record), key=lambda i: entries[i].recorded.row_id
        )
        self._errors = any(p.level == ERROR for p in self._problems)

    def _ensure_schema(self) -> None:
        """Create or upgrade the tracking table once, before the first step that writes to it."""
        table = self._table
        if table.exists and not table.needs_upgrade and not self._legacy:
            return
        self.recorder.ensure_schema(table, self._current())
        if table.exists:  # upgraded, or a Go migrator's rows adopted: read what they became (once)
            self._read()
        else:
            self._table = replace(
                table, exists=True, columns=frozenset(REQUIRED_COLUMNS | set(NIXMIG_COLUMNS))
            )

    def _after(self, direction: str, done: list[Entry]) -> None:
        """Bring the kept state up to date with the migrations a step applied or rolled back."""
        if not done:
            return
        if any(e.progress is not None or e.state in PARTIAL for e in done):
            self._read()  # a resumed no-transaction file: its progress and warnings change too
            return
        changed: set[int] = set()
        if direction == "up":
            for e in done:  # their rows' ids are fetched when needed, in one query (see _fetch)
                position = self._position[e.id]
                self._unfetched.append(position)
                record = AppliedRecord(0, e.name, e.module, _NOT_READ, e.files.checksum)
                self._set(position, replace(e, state=APPLIED, record=record, out_of_order=False))
                self._order.append(position)  # the newest row
                changed.add(position)
        else:
            if any(e.migration is None for e in done):
                self._read()  # a missing migration's record removed (--fake): its entry goes away
                return
            rolled_back = [self._position[e.id] for e in done]
            for position in rolled_back:
                self._set(
                    position, replace(self._entries[position], state=PENDING, record=None, out_of_order=False)
                )
                changed.add(position)
            if self._order[-len(rolled_back) :] == rolled_back[::-1]:
                del self._order[-len(rolled_back) :]  # the newest rows, as a rollback always takes
            else:
                self._order = [p for p in self._order if p not in changed]
        self._status = None
        self._mark_out_of_order(changed)

    def _set(self, position: int, entry: Entry) -> None:
        """Put ``entry`` at ``position``, keeping the state counts and the pending positions right."""
        old = self._entries[position]
        self._counts[old.state] -= 1
        self._counts[entry.state] += 1
        was, now = old.state in (PENDING, PARTLY_APPLIED), entry.state in (PENDING, PARTLY_APPLIED)
        if was and not now:
            del self._pending[bisect.bisect_left(self._pending, position)]
        elif now and not was:
            bisect.insort(self._pending, position)
        self._entries[position] = entry

    def _mark_out_of_order(self, changed: set[int]) -> None:
        """Recompute the out-of-order flags that a step can change: those between the old and new last applied."""
        entries, old = self._entries, self._last_applied
        new = max([old, *(p for p in changed if entries[p].record is not None)])
        while new >= 0 and entries[new].record is None:  # the last applied one was rolled back
            new -= 1
        self._last_applied = new
        for position in changed | set(range(min(old, new) + 1, max(old, new) + 1)):
            if position < 0:
                continue
            e = entries[position]
            flag = e.record is None and position < new
            if e.out_of_order != flag:
                entries[position] = replace(e, out_of_order=flag)

    def _after_failure(self) -> None:
        """After a failed step, take the state from the database (what committed); or stop the session."""
        self._status = None
        try:
            if self.connection.connection is not self._raw:
                raise DatabaseError("the connection was replaced")
            self._read()
        except (DatabaseError, psycopg.Error):
            self._broken = (
                "the connection to the database was lost during a step, and the migration lock with it"
            )


def session(
    database: str = "default",
    *,
    tree: Tree | None = None,
    directory: str | Path | None = None,
    schema: str | None = None,
    create_schema: bool = False,
    lock_wait: float | None = None,
    progress: Callback | None = None,
    command: str = "nixmig",
) -> Session:
    """Return a session on ``database``: several up / down steps under one lock and one read.

    ::

        with api.session("default", tree=tree) as s:
            s.up(to="auth/003_roles")
            s.down(steps=1)
            print(s.status().counts())

    ``tree`` reuses a loaded tree (default: read ``directory`` or NIXMIG['MIGRATIONS_DIR']);
    ``schema`` runs in that schema (search_path, tracking table and lock of the schema),
    creating it first with ``create_schema``; ``lock_wait`` is how long to wait for another
    runner's lock (default NIXMIG['LOCK_WAIT']); ``progress`` gets the engine's events, as
    with ``migrate_up``; ``command`` names the run in ``application_name`` while it holds the
    lock. Entering raises NixmigError (a bad tree, no database, the lock not free in time)
    before anything is run.
    """
    return Session(
        database,
        tree or load_tree(directory),
        schema=schema,
        create_schema=create_schema,
        lock_wait=lock_wait,
        progress=progress,
        command=command,
    )


@_database_errors
def applied_migrations(database: str = "default", schema: str | None = None) -> list[AppliedRecord]:
    """Return the tracking table's rows in application order (GetAppliedMigrations)."""
    connection = connection_for(database)
    return Recorder(connection, schema=schema).read().records


def rollback(steps: int = 1, **options: Any) -> RunResult:
    """Roll back the last ``steps`` applied migrations (RollbackMigration / RollbackMigrations)."""
    return migrate_down(steps=steps, **options)


def rollback_all(**options: Any) -> RunResult:
    """Roll back every applied migration."""
    return migrate_down(everything=True, steps=None, **options)


def reset_migrations(**options: Any) -> RunResult:
    """Forget every applied migration without running SQL (ResetMigrations = down --all --fake)."""
    return migrate_down(everything=True, steps=None, fake=True, **options)


@_database_errors
def repair(
    ids: list[str] | None = None,
    *,
    directory: str | Path | None = None,
    database: str = "default",
    lock_wait: float | None = None,
) -> list[str]:
    """Record the current checksum of edited applied files (all changed ones, or ``ids``)."""
    tree = load_tree(directory)
    tree.raise_for_errors()
    connection = connection_for(database)
    recorder = Recorder(connection)
    with MigrationLock(connection, recorder.table, wait=lock_wait, command="sqlmigrate_repair"):
        state = recorder.read()
        current = resolve(tree, state.records, state.progress, table=recorder.table)
        current.raise_for_errors()
        changed = {e.id: e for e in current.with_state("changed")}
        wanted = list(changed) if not ids else [i.strip("/") for i in ids]
        for mid in wanted:
            if mid not in changed:
                raise PlanError(
                    f"{mid} is not a changed applied migration; sqlmigrate_status lists the changed ones."
                )
        recorder.ensure_schema(state, current)
        for mid in wanted:
            recorder.set_checksum(changed[mid].recorded, changed[mid].files.checksum)
    return wanted


@_database_errors
def forget_progress(
    ids: list[str], *, database: str = "default", lock_wait: float | None = None
) -> list[str]:
    """Forget the progress of partly applied / partly rolled-back migrations, after settling them by hand.

    A partly applied migration becomes pending again (you undid its statements that ran); a partly
    rolled-back one stays applied (you restored what its down statements undid). Runs no SQL of
    the migrations. Also removes stale progress rows, named by id.
    """
    connection = connection_for(database)
    recorder = Recorder(connection)
    with MigrationLock(connection, recorder.table, wait=lock_wait, command="sqlmigrate_repair"):
        state = recorder.read()
        known = {(f"{p.module}/{p.name}" if p.module else p.name): (p.module, p.name) for p in state.progress}
        wanted = [i.strip().strip("/") for i in ids]
        for mid in wanted:
            if mid not in known:
                raise PlanError(
                    f"{mid} has no progress row: it is not partly applied or partly rolled back "
                    "(sqlmigrate_status marks those [!]); nothing was changed."
                )
        for mid in wanted:
            recorder.forget_progress(*known[mid])
    return wanted


# Go-style aliases.
apply_migrations = migrate_up
get_applied_migrations = applied_migrations
load_migrations = load_tree
