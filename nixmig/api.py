"""The Python API: what the management commands call, and what scripts and tests can call.

Twins of the Nixopus Go migrator's API: ``load_tree`` (LoadMigrations), ``migrate_up``
(ApplyMigrations), ``rollback`` / ``rollback_all`` (RollbackMigration(s)),
``applied_migrations`` (GetAppliedMigrations), ``reset_migrations`` (ResetMigrations).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.db import DatabaseError, connections

from . import conf, databases, signals
from .exceptions import DatabaseUnavailable, NixmigError, PlanError, TreeError
from .executor import Executor, RunOptions
from .lock import MigrationLock
from .plan import (
    PARTIAL,
    PARTLY_APPLIED,
    AppliedRecord,
    Entry,
    Status,
    describe_partial,
    plan_down,
    plan_up,
    resolve,
)
from .recorder import Recorder
from .tree import ERROR, WARNING, Problem, Tree
from .tree import load_tree as _load_tree

Callback = Callable[..., None]

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


def _database_errors(function):
    """Turn a database error that escapes nixmig's own handling (a connection cut while waiting for the
    lock, or during a catalog query) into one paragraph that says what it means for the records."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DatabaseError as exc:
            from .pgerrors import connection_lost, describe

            text, sqlstate = describe(exc)
            database = kwargs.get("database", "default")
            what = (
                "The connection to database {db!r} was lost"
                if connection_lost(exc, sqlstate)
                else "A query nixmig sent to database {db!r} failed"
            ).format(db=database)
            raise DatabaseUnavailable(
                f"{what}: {text.rstrip('.')}. Each migration and its record are one transaction (a no-transaction "
                "file keeps its progress), so the tracking table still says exactly what ran; sqlmigrate_status "
                "shows it. Run the command again once the database answers."
            ) from None

    return wrapper


def load_tree(directory: str | Path | None = None) -> Tree:
    """Read the migration tree (default: NIXMIG['MIGRATIONS_DIR'])."""
    return _load_tree(
        directory if directory is not None else conf.migrations_dir(),
        allow_empty=bool(conf.get("ALLOW_EMPTY")),
    )


def connection_for(database: str = "default"):
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
    return connection


def _state(connection, tree: Tree, table: str | None = None, schema: str | None = None):
    recorder = Recorder(connection, table, schema)
    state = recorder.read()
    return recorder, state, _resolve(tree, state, recorder)


def _resolve(tree: Tree, state, recorder: Recorder) -> Status:
    """Resolve the states, and describe partly run files by the lines of their statements."""
    current = resolve(tree, state.records, state.progress, table=recorder.table)
    partial = [e for e in current.entries if e.state in PARTIAL]
    if not partial:
        return current  # the usual case: no parser needed
    from .executor import resume_problem
    from .sqltext import examine

    detailed = {}
    for e in partial:
        sql_file = e.migration.up if e.state == PARTLY_APPLIED else e.migration.down
        prep = examine(sql_file)[0] if sql_file is not None else None
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
) -> Status:
    """Return every migration with its state, and the problems found.

    Creates the tracking table when it is missing (so a fresh database reads as 'all pending'),
    but only if the migration lock is free and the database is writable; it never waits.
    ``schema`` reads the tracking table of that schema (a schema-per-tenant target).
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
    return result


def require_schema(connection, schema: str | None, *, create: bool = False) -> None:
    """Raise a clear error when the schema of a schema target does not exist (or create it)."""
    if not schema:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", [schema])
        if cursor.fetchone()[0]:
            return
        if create:
            try:
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {connection.ops.quote_name(schema)}")
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


def _try_create(connection, recorder: Recorder) -> None:
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
    return _run(
        "up",
        directory,
        database,
        progress,
        lock_wait,
        fake,
        lambda status: plan_up(
            status, to=to, allow_changed=allow_changed, allow_out_of_order=allow_out_of_order
        ),
        atomic=atomic,
        tree=tree,
        schema=schema,
        create_schema=create_schema,
    )


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
    return _run(
        "down",
        directory,
        database,
        progress,
        lock_wait,
        fake,
        lambda status: plan_down(status, steps=steps, to=to, everything=everything, fake=fake),
        tree=tree,
        schema=schema,
    )


@_database_errors
def plan(
    direction: str = "up",
    *,
    directory: str | Path | None = None,
    database: str = "default",
    schema: str | None = None,
    **options,
) -> list[Entry]:
    """Return what ``migrate_up`` / ``migrate_down`` would run with these options, changing nothing."""
    tree = load_tree(directory)
    tree.raise_for_errors()
    current = status(tree=tree, database=database, create_table=False, schema=schema)
    if direction == "up":
        entries = plan_up(current, **options)
    else:
        entries = plan_down(current, **options)
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
    **options,
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
        sql_file = e.migration.up if direction == "up" else e.migration.down
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


def refused_files(entries: list[Entry]) -> list[Problem]:
    """Return what a run would refuse in the files of pending migrations, as status problems.

    Up files of pending (and partly applied) migrations are checked as ``sqlmigrate_up`` would
    (errors); their down files as ``sqlmigrate_down`` would once they are applied (warnings).
    Only pending files are parsed, so status of a fully applied tree never loads the parser.
    """
    todo = [e for e in entries if e.migration is not None and e.record is None]
    if not todo:
        return []
    from .sqltext import examine

    out = []
    for e in todo:
        for sql_file, level in ((e.migration.up, ERROR), (e.migration.down, WARNING)):
            if sql_file is None:
                continue
            for message in examine(sql_file)[1]:
                out.append(Problem(message, sql_file.relpath, level, "refused"))
    return out


def _with_migration_signals(emit: Callback, database: str) -> Callback:
    """Wrap a progress callback so pre_migration / post_migration are sent around each migration."""

    def callback(event: str, **data) -> None:
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


def _run(
    direction,
    directory,
    database,
    progress,
    lock_wait,
    fake,
    make_plan,
    atomic=False,
    tree: Tree | None = None,
    schema: str | None = None,
    create_schema: bool = False,
) -> RunResult:
    emit = _with_migration_signals(progress or (lambda event, **data: None), database)
    tree = tree or load_tree(directory)
    tree.raise_for_errors()
    for problem in tree.problems:
        if problem.level == "warning":
            emit("warning", message=problem.message)
    connection = connection_for(database)
    require_schema(connection, schema, create=create_schema)
    recorder = Recorder(connection, schema=schema)
    started = time.perf_counter()
    with MigrationLock(
        connection, recorder.table, wait=lock_wait, callback=emit, command=f"sqlmigrate_{direction}"
    ):
        state = recorder.read()  # re-read under the lock: another runner may have applied everything
        current = _resolve(tree, state, recorder)
        entries = make_plan(current)
        prepared = _prepare(tree, entries, direction, fake)
        for check in _plan_checks:  # e.g. the linter: may raise to refuse the plan; nothing has run yet
            check(
                direction=direction,
                entries=entries,
                prepared=prepared,
                connection=connection,
                fake=fake,
                emit=emit,
            )
        result = RunResult(
            direction,
            entries,
            database=database,
            fake=fake,
            schema=schema,
            skipped=sum(1 for e in current.entries if e.record is not None) - len(entries)
            if direction == "down"
            else len(current.with_state("applied", "changed")),
        )
        emit("plan", direction=direction, entries=entries, fake=fake)
        if not entries:
            if not state.exists or state.needs_upgrade or current.legacy:
                recorder.ensure_schema(state, current)  # adopt a Go migrator's table even with nothing to run
            result.seconds = time.perf_counter() - started
            return result
        recorder.ensure_schema(state, current)
        signals.pre_sqlmigrate.send(
            sender=RunResult, direction=direction, database=database, plan=entries, fake=fake
        )
        executor = Executor(connection, recorder, emit)
        try:
            result.done = executor.run(entries, prepared, RunOptions(direction, fake, atomic))
        finally:
            result.seconds = time.perf_counter() - started
        signals.post_sqlmigrate.send(sender=RunResult, direction=direction, database=database, result=result)
    return result


@_database_errors
def applied_migrations(database: str = "default", schema: str | None = None) -> list[AppliedRecord]:
    """Return the tracking table's rows in application order (GetAppliedMigrations)."""
    connection = connection_for(database)
    return Recorder(connection, schema=schema).read().records


def rollback(steps: int = 1, **options) -> RunResult:
    """Roll back the last ``steps`` applied migrations (RollbackMigration / RollbackMigrations)."""
    return migrate_down(steps=steps, **options)


def rollback_all(**options) -> RunResult:
    """Roll back every applied migration."""
    return migrate_down(everything=True, steps=None, **options)


def reset_migrations(**options) -> RunResult:
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
            recorder.set_checksum(changed[mid].record, changed[mid].migration.checksum)
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
