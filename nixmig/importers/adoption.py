"""Read another tool's tracking table and record the same migrations as applied in nixmig's.

The source table is only ever read (one SELECT). What each tool's table means:

- golang-migrate ``schema_migrations(version bigint, dirty boolean)``: one row, the latest
  version; every version up to it is applied; ``dirty`` means a migration failed half-way.
- dbmate ``schema_migrations(version varchar)``: one row per applied version.
- goose ``goose_db_version(id, version_id, is_applied, tstamp)``: a log; the latest row of a
  version decides; version 0 is goose's own first row.
- Diesel ``__diesel_schema_migrations(version varchar(50), run_on timestamp)``: one row per
  applied version.
- Flyway ``flyway_schema_history(installed_rank, version, type, checksum, installed_on,
  success, ...)``: a log in installed_rank order; ``success = false`` is a failed migration;
  a BASELINE row stands for every version up to it; undo and delete rows take a version back.
- popx ``schema_migration(version varchar(48), version_self int)``: one row per applied version.

Timestamps without a time zone (goose, Diesel, Flyway) are read in the database's default
time zone, the one the tool's own session had.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction

from .. import sqlnames
from ..exceptions import AdoptionError, UnsafeName
from .readers import Source, flyway_version_key

if TYPE_CHECKING:
    from ..tree import Migration

DEFAULT_TABLES = {
    "golang-migrate": "schema_migrations",
    "dbmate": "schema_migrations",
    "goose": "goose_db_version",
    "diesel": "__diesel_schema_migrations",
    "flyway": "flyway_schema_history",
    "popx": "schema_migration",
}
COLUMNS = {
    "golang-migrate": {"version", "dirty"},
    "dbmate": {"version"},
    "goose": {"id", "version_id", "is_applied", "tstamp"},
    "diesel": {"version", "run_on"},
    "flyway": {"installed_rank", "version", "type", "checksum", "installed_on", "success", "script"},
    "popx": {"version"},
}
_LOCAL_TIME = "AT TIME ZONE (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone')"


@dataclass(frozen=True)
class SourceState:
    """What the other tool's table says is applied: version -> applied time (None: the tool keeps none)."""

    tool: str
    table: str
    applied: dict[str, datetime | None]


def _quote_table(connection, table: str) -> str:
    try:
        return sqlnames.table(table)
    except UnsafeName:
        raise AdoptionError(
            f"{table!r} is not a table name; pass --source-table as 'name' or 'schema.name'."
        ) from None


def read_source_state(connection, source: Source, table: str | None = None) -> SourceState:
    """Read the tool's tracking table; raise AdoptionError on a dirty or failed state or unknown versions."""
    tool = source.tool
    table = table or DEFAULT_TABLES[tool]
    qtable = _quote_table(connection, table)
    where = f"database {connection.settings_dict.get('NAME')!r}"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL, ARRAY(SELECT attname::text FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped)",
            [qtable, qtable],
        )
        exists, columns = cursor.fetchone()
        if not exists:
            raise AdoptionError(
                f"There is no table {table} in {where}, so there is nothing of {tool} to adopt. Check "
                f"that DATABASE_URL / --database points at the database {tool} migrated, and pass "
                "--source-table if the tool was configured with another table name."
            )
        missing = COLUMNS[tool] - set(columns)
        if tool == "dbmate" and "dirty" in columns:
            raise AdoptionError(
                f"The table {table} in {where} has a 'dirty' column: it is golang-migrate's table, "
                "not dbmate's (both are called schema_migrations). Pass --from golang-migrate with "
                "golang-migrate's folder, or --source-table with dbmate's table."
            )
        if missing:
            hint = (
                " dbmate's table has the same name: did you mean --from dbmate?"
                if tool == "golang-migrate" and columns
                else ""
            )
            raise AdoptionError(
                f"The table {table} in {where} has no column(s) {', '.join(sorted(missing))}, so it "
                f"is not {tool}'s tracking table (expected {', '.join(sorted(COLUMNS[tool]))}).{hint} "
                "Pass the right --from, or --source-table with the table the tool used."
            )
        try:
            applied = _READ[tool](cursor, qtable, table, source)
        except DatabaseError as exc:
            raise AdoptionError(
                f"Can't read {tool}'s table {table} in {where} "
                f"({str(exc).strip().splitlines()[0]}); check that it is the tool's table."
            ) from None
    versions = source.by_version()
    unknown = sorted(v for v in applied if v not in versions)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise AdoptionError(
            f"{tool}'s table {table} records {len(unknown)} applied version(s) that {source.directory} "
            f"has no migration for: {shown}. Point SRC at the migrations folder that migrated this "
            "database (all of it, at the same release); nothing was recorded."
        )
    return SourceState(tool, table, applied)


def _golang_migrate(cursor, qtable, table, source):
    cursor.execute(f"SELECT version::bigint, dirty FROM {qtable}")
    rows = cursor.fetchall()
    if len(rows) > 1:
        raise AdoptionError(
            f"golang-migrate's table {table} has {len(rows)} rows; golang-migrate keeps exactly one. "
            "Check that it is golang-migrate's table (dbmate uses the same name: --from dbmate?)."
        )
    if not rows:
        return {}
    version, dirty = rows[0]
    if dirty:
        raise AdoptionError(
            f"golang-migrate marked version {version} dirty in {table}: that migration failed "
            "half-way and the schema may be partly changed. Check the schema against version "
            f"{version}'s up file, finish or undo it by hand, then run 'migrate force {version}' "
            "(or the version before it) and adopt again; nothing was recorded."
        )
    if str(version) not in source.by_version():
        raise AdoptionError(
            f"golang-migrate's table {table} says the database is at version {version}, but the "
            f"folder {source.directory} has no migration {version}; point SRC at the folder that "
            "migrated this database. Nothing was recorded."
        )
    return {m.version: None for m in source.migrations if int(m.version) <= version}


def _versions(cursor, qtable, table, source):
    cursor.execute(f"SELECT version::text FROM {qtable}")
    return {row[0]: None for row in cursor.fetchall()}


def _goose(cursor, qtable, table, source):
    cursor.execute(f"SELECT version_id::bigint, is_applied, tstamp {_LOCAL_TIME} FROM {qtable} ORDER BY id")
    latest: dict[str, tuple[bool, datetime]] = {}
    for version, is_applied, tstamp in cursor.fetchall():
        if version == 0:
            continue  # goose's own first row
        latest[str(version)] = (is_applied, tstamp)
    return {v: at for v, (is_applied, at) in latest.items() if is_applied}


def _diesel(cursor, qtable, table, source):
    cursor.execute(f"SELECT version::text, run_on {_LOCAL_TIME} FROM {qtable}")
    return {version: run_on for version, run_on in cursor.fetchall()}


def _flyway(cursor, qtable, table, source):
    cursor.execute(
        f"SELECT installed_rank, version, type, script, checksum, installed_on {_LOCAL_TIME}, success "
        f"FROM {qtable} ORDER BY installed_rank"
    )
    by_key = {flyway_version_key(m.version): m for m in source.migrations}
    applied: dict[str, datetime | None] = {}
    for rank, version, kind, script, checksum, installed_on, success in cursor.fetchall():
        if version is None:
            continue  # the schema-creation marker, or a repeatable migration
        key = flyway_version_key(version)
        if not success:
            raise AdoptionError(
                f"Flyway's table {table} records a failed migration: version {version} ({script}, "
                f"installed_rank {rank}). Check what of it reached the schema, finish or undo it by "
                "hand, then run 'flyway repair' (which removes the failed row) and adopt again; "
                "nothing was recorded."
            )
        migration = by_key.get(key)
        if kind == "BASELINE":
            for k, m in by_key.items():
                if k <= key:
                    applied[m.version] = installed_on
            continue
        if kind.startswith("UNDO") or kind == "DELETE":
            if migration is not None:
                applied.pop(migration.version, None)
            continue
        if migration is None:
            applied[version] = installed_on  # reported as unknown by the caller
            continue
        if (
            kind == "SQL"
            and checksum is not None
            and migration.checksum is not None
            and checksum != migration.checksum
        ):
            raise AdoptionError(
                f"{migration.up_origin} was edited after Flyway applied it: its checksum is "
                f"{migration.checksum}, Flyway recorded {checksum} (installed_rank {rank}); "
                "'flyway validate' fails on this too. Restore the applied text (or accept the edit "
                "with 'flyway repair') and adopt again; nothing was recorded."
            )
        applied[migration.version] = installed_on
    return applied


_READ: dict[str, Callable] = {
    "golang-migrate": _golang_migrate,
    "dbmate": _versions,
    "goose": _goose,
    "diesel": _diesel,
    "flyway": _flyway,
    "popx": _versions,
}


@dataclass(frozen=True)
class AdoptResult:
    recorded: list[str]  # nixmig ids recorded now
    already: list[str]  # ids nixmig had recorded before
    not_applied: list[str]  # ids the source tool has not applied (pending in nixmig)


def record(
    connection,
    plan,
    state: SourceState,
    *,
    lock_wait: float | None = None,
    progress: Callable[..., None] | None = None,
    write: Callable[[], object] | None = None,
) -> AdoptResult:
    """Record the plan's migrations that ``state`` says are applied, under the migration lock.

    ``write`` (writing the plan's files) runs once the lock is held, so a runner that holds
    the lock never sees the files without their records, and a lock timeout writes nothing.
    """
    from .. import api
    from ..lock import MigrationLock
    from ..plan import resolve
    from ..recorder import Recorder

    recorder = Recorder(connection)
    emit = progress or (lambda event, **data: None)
    with MigrationLock(
        connection, recorder.table, wait=lock_wait, callback=emit, command="sqlmigrate_import"
    ):
        if write is not None:
            write()
        tree = api.load_tree(plan.directory)
        tree.raise_for_errors()
        table_state = recorder.read()
        current = resolve(tree, table_state.records, table_state.progress, table=recorder.table)
        entries = {e.id: e for e in current.entries}
        rows: list[tuple[Migration, datetime | None]] = []
        already: list[str] = []
        not_applied: list[str] = []
        for planned in plan.migrations:
            entry = entries.get(planned.id)
            if planned.source.version not in state.applied:
                not_applied.append(planned.id)
            elif entry is not None and entry.record is not None:
                already.append(planned.id)
            else:
                # written before the tree was loaded, so it is in the tree
                rows.append((tree.by_id[planned.id], state.applied[planned.source.version]))
        try:
            recorder.ensure_schema(table_state, current)
            if rows:
                with transaction.atomic(using=connection.alias):
                    recorder.record_adopted(rows)
        except DatabaseError as exc:
            raise AdoptionError(
                f"Recording the adopted migrations failed ({str(exc).strip().splitlines()[0]}); "
                "nothing was recorded. The imported files stay written: once the cause is fixed, "
                "run the same command again, it keeps them and records the rest."
            ) from None
    return AdoptResult([m.id for m, _ in rows], already, not_applied)
