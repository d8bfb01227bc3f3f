"""The one object that owns the tracking table.

A row in the tracking table always means the migration is applied (the Nixopus Go
migrator reads it that way too). The table keeps the Go migrator's columns
``id BIGSERIAL, name VARCHAR, applied_at TIMESTAMPTZ`` (``name`` is the bare
``<NNN>_<name>``) and adds nullable ``module``, ``checksum`` and ``execution_ms``, so
the Go migrator can keep inserting ``(name, applied_at)`` rows after nixmig adopted
its table. Progress of a no-transaction migration that stopped part-way lives in a
separate ``<table>_progress`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from django.db import DatabaseError, transaction

from . import conf
from .exceptions import TrackingTableError, UnsafeName
from .plan import AppliedRecord, Progress, Status
from .sqlnames import check_schema, ident, literal, split_table, values
from .tree import Migration

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

REQUIRED_COLUMNS = {"id", "name", "applied_at"}
NIXMIG_COLUMNS = {"module": "VARCHAR", "checksum": "VARCHAR(64)", "execution_ms": "DOUBLE PRECISION"}


# applied_at as whole microseconds since 1970 (exact, any time zone): an integer is loaded in C,
# where Django's timestamptz loader costs several microseconds of Python per row (a third of
# reading 10,000 rows). _timestamps() turns it into what Django's loader would have returned.
APPLIED_AT_MICROSECONDS = "(extract(epoch FROM applied_at::timestamptz) * 1000000)::bigint"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamps(connection: BaseDatabaseWrapper) -> Callable[[int], datetime]:
    """Return a function turning APPLIED_AT_MICROSECONDS into the datetime Django's cursor would give.

    Aware in the connection's time zone with USE_TZ (UTC unless the database sets another), naive
    in that zone without it, as Django's own loader does.
    """
    aware = connection.timezone  # None without USE_TZ
    zone = aware if aware is not None else ZoneInfo(connection.timezone_name)
    utc = str(zone) in ("UTC", "Etc/UTC")

    def when(microseconds: int) -> datetime:
        moment = _EPOCH + timedelta(microseconds=microseconds)
        if utc:
            return moment if aware is not None else moment.replace(tzinfo=None)
        local = moment.astimezone(zone)
        return local if aware is not None else local.replace(tzinfo=None)

    return when


@dataclass(frozen=True)
class TableState:
    exists: bool
    columns: frozenset[str]
    records: list[AppliedRecord]
    progress: list[Progress]
    progress_exists: bool

    @property
    def needs_upgrade(self) -> bool:
        return self.exists and not set(NIXMIG_COLUMNS) <= self.columns


class Recorder:
    """Read and write the tracking table of one database connection."""

    # Any Django connection: it needs cursors, the alias and the time zone (the SQL is PostgreSQL's).
    def __init__(self, connection: BaseDatabaseWrapper, table: str | None = None, schema: str | None = None):
        self.connection = connection
        self.table = table or conf.table()
        self.schema = schema  # a schema target: the tables live there, and migrations run with it first
        try:
            parts = split_table(self.table)
        except UnsafeName:
            raise TrackingTableError(
                f"NIXMIG['TABLE'] = {self.table!r} is not a table name; use 'migrations' "
                "or 'schema.migrations'."
            ) from None
        if schema:
            parts = (check_schema(schema, "schema"), parts[-1])
            self.table = ".".join(parts)
        self.qtable = ident(*parts)
        self.qprogress = ident(*parts[:-1], parts[-1] + "_progress")
        self.index_name = ident(parts[-1] + "_module_name_key")

    # -- reading -------------------------------------------------------------------------

    def fingerprint(self) -> str | None:
        """Return a digest of every row of the table and of its progress table, or None without the table.

        Two queries whatever the number of rows (the server hashes them): equal digests mean that
        ``read()`` would return the same rows, so a summary built from them can be reused.
        """
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
                "ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped)",
                [self.qtable, self.qprogress, self.qtable],
            )
            exists, progress_exists, columns = cursor.fetchone()
            if not exists or not {*REQUIRED_COLUMNS, *NIXMIG_COLUMNS} <= set(columns):
                return None
            progress_sql = (
                f"(SELECT md5(coalesce(string_agg(p::text, ',' ORDER BY p::text), '')) FROM {self.qprogress} p)"
                if progress_exists
                else "''"
            )
            cursor.execute(
                "SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(concat_ws('/', id, module, name, "
                f"checksum, applied_at, execution_ms), ',' ORDER BY id), '')), {progress_sql} FROM {self.qtable}"
            )
            return ":".join(str(v) for v in cursor.fetchone())

    def read(self) -> TableState:
        """Return the table's columns, its rows in application order, and any progress rows."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
                "ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped)",
                [self.qtable, self.qprogress, self.qtable],
            )
            exists, progress_exists, columns = cursor.fetchone()
            columns = frozenset(columns)
            records: list[AppliedRecord] = []
            if exists:
                missing = REQUIRED_COLUMNS - columns
                if missing:
                    raise TrackingTableError(
                        f"The tracking table {self.table} has no column(s) {', '.join(sorted(missing))}; it was "
                        "altered by hand or belongs to another tool. Restore the columns id, name and applied_at, "
                        "or set NIXMIG['TABLE'] to another table name."
                    )
                extra = ", ".join(c if c in columns else f"NULL AS {c}" for c in NIXMIG_COLUMNS)
                try:
                    cursor.execute(
                        f"SELECT id::bigint, name::text, {APPLIED_AT_MICROSECONDS}, {extra} FROM {self.qtable} "
                        "ORDER BY id"
                    )  # casts: a column retyped by hand reads right or fails here
                    rows = cursor.fetchall()
                except DatabaseError as exc:
                    raise TrackingTableError(
                        f"The tracking table {self.table} can't be read ({str(exc).strip()}); was it altered by "
                        "hand? Its columns must be id BIGINT, name VARCHAR, applied_at TIMESTAMPTZ."
                    ) from exc
                when = _timestamps(
                    self.connection
                )  # applied_at is NOT NULL in nixmig's and the Go migrator's table
                records = [AppliedRecord(r[0], r[1], r[3], when(r[2]), r[4], r[5]) for r in rows]
            progress: list[Progress] = []
            if progress_exists:
                cursor.execute(
                    f"SELECT module, name, direction, checksum, statements_done, statement_hashes, "
                    f"total, error, updated_at FROM {self.qprogress}"
                )
                progress = [
                    Progress(r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6], r[7], r[8])
                    for r in cursor.fetchall()
                ]
        return TableState(exists, columns, records, progress, progress_exists)

    def read_since(self, row_id: int) -> list[AppliedRecord]:
        """Return the rows added after row ``row_id``, in application order (the table has nixmig's columns)."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id::bigint, name::text, applied_at::timestamptz, module, checksum, execution_ms "
                f"FROM {self.qtable} WHERE id > %s ORDER BY id",
                [row_id],
            )
            return [AppliedRecord(r[0], r[1], r[3], r[2], r[4], r[5]) for r in cursor.fetchall()]

    # -- schema --------------------------------------------------------------------------

    def create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qtable} ("
            "id BIGSERIAL PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "module VARCHAR, checksum VARCHAR(64), execution_ms DOUBLE PRECISION); "
            f"CREATE UNIQUE INDEX IF NOT EXISTS {self.index_name} ON {self.qtable} (module, name)"
        )

    def ensure_schema(self, state: TableState, status: Status | None = None) -> None:
        """Create the table, or upgrade a Go migrator's table in place. Call with the lock held."""
        statements = []
        if not state.exists:
            statements.append(self.create_sql())
        elif state.needs_upgrade:
            statements.append(
                f"ALTER TABLE {self.qtable} "
                + ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {t}" for c, t in NIXMIG_COLUMNS.items())
            )
            statements.append(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {self.index_name} ON {self.qtable} (module, name)"
            )
        if status is not None and status.legacy:
            statements.append(self.adopt_sql(status.legacy))
        if not statements:
            return
        try:
            with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)
        except DatabaseError as exc:
            raise TrackingTableError(
                f"Can't create or upgrade the tracking table {self.table} ({str(exc).strip().splitlines()[0]}); "
                "nothing was run. Was it altered by hand, or replaced by a view? Make it a table with the columns "
                "id BIGSERIAL, name VARCHAR, applied_at TIMESTAMPTZ, or set NIXMIG['TABLE'] to another name."
            ) from exc

    def adopt_sql(self, legacy: tuple[tuple[AppliedRecord, Migration], ...]) -> str:
        """Return SQL that fills module and checksum of bare-name rows, keeping id, name and applied_at."""
        rows = values((int(r.row_id), m.module, m.checksum) for r, m in legacy)
        return (
            f"UPDATE {self.qtable} AS t SET module = v.module, checksum = v.checksum "
            f"FROM (VALUES {rows}) AS v(id, module, checksum) WHERE t.id = v.id"
        )

    def progress_table_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qprogress} (module VARCHAR NOT NULL, name VARCHAR NOT NULL, "
            "direction VARCHAR(4) NOT NULL, checksum VARCHAR(64) NOT NULL, statements_done INTEGER NOT NULL, "
            "statement_hashes TEXT[] NOT NULL, total INTEGER NOT NULL, error TEXT, "
            "updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (module, name, direction))"
        )

    def ensure_progress_table(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(self.progress_table_sql())

    # -- writing -------------------------------------------------------------------------

    def record_sql(self, migration: Migration) -> str:
        """SQL that records ``migration`` as applied; the execution time is measured by the server.

        Sent in the same query string as the migration's body, ``statement_timestamp()`` is
        when that string arrived, so the difference to ``clock_timestamp()`` is its run time.
        """
        return (
            f"INSERT INTO {self.qtable} (name, module, checksum, applied_at, execution_ms) VALUES "
            f"({literal(migration.name)}, {literal(migration.module)}, {literal(migration.checksum)}, "
            "clock_timestamp(), round((1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()))"
            "::numeric, 3)::float8)"
        )

    def unrecord_sql(self, record: AppliedRecord) -> str:
        return f"DELETE FROM {self.qtable} WHERE id = {int(record.row_id)}"

    def record_applied(self, migration: Migration) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(self.record_sql(migration))

    def record_unapplied(self, record: AppliedRecord) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(self.unrecord_sql(record))

    def set_execution_ms(self, migration: Migration, ms: float) -> None:
        """Record ``ms`` as the execution time of applied ``migration`` (a no-transaction file: its statements' sum)."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {self.qtable} SET execution_ms = %s WHERE module IS NOT DISTINCT FROM %s AND name = %s",
                [round(ms, 3), migration.module, migration.name],
            )

    def set_checksum(self, record: AppliedRecord, checksum: str) -> None:
        """Accept an intended edit of an applied file."""
        with self.connection.cursor() as cursor:
            cursor.execute(f"UPDATE {self.qtable} SET checksum = %s WHERE id = %s", [checksum, record.row_id])

    def delete_all(self) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {self.qtable}")
            return cursor.rowcount

    def progress_sql(
        self,
        migration: Migration,
        direction: str,
        checksum: str,
        hashes: list[str],
        total: int,
        done: int | None = None,
    ) -> str:
        """SQL that says statements 1..``done`` of ``migration``'s ``direction`` file ran.

        It is sent in the same transaction as the last of those statements, so the row and the
        statement's effect commit together. ``hashes`` has one hash per statement that ran, and
        one more (``done = len(hashes) - 1``) before a statement that can't run in a transaction is
        sent: it is then "in flight" until the row that follows it. At most one row per migration:
        a row of the other direction can't exist (up refuses a partly rolled-back migration, down a
        partly applied one).
        """
        done = len(hashes) if done is None else done
        hashes_sql = "ARRAY[" + ", ".join(literal(h) for h in hashes) + "]::text[]"
        return (
            f"INSERT INTO {self.qprogress} (module, name, direction, checksum, statements_done, statement_hashes, "
            f"total, error, updated_at) VALUES ({literal(migration.module)}, {literal(migration.name)}, "
            f"{literal(direction)}, {literal(checksum)}, {int(done)}, {hashes_sql}, {int(total)}, NULL, now()) "
            "ON CONFLICT (module, name, direction) DO UPDATE SET checksum = EXCLUDED.checksum, "
            "statements_done = EXCLUDED.statements_done, statement_hashes = EXCLUDED.statement_hashes, "
            "total = EXCLUDED.total, error = NULL, updated_at = now()"
        )

    def progress_error_sql(self, migration: Migration, direction: str, error: str) -> str:
        """SQL that keeps why the statement after the last one done failed."""
        return (
            f"UPDATE {self.qprogress} SET error = {literal(error.replace(chr(0), ''))}, updated_at = now() "
            f"WHERE module = {literal(migration.module)} AND name = {literal(migration.name)} "
            f"AND direction = {literal(direction)}"
        )

    def save_progress(
        self,
        migration: Migration,
        direction: str,
        checksum: str,
        hashes: list[str],
        total: int,
        error: str | None = None,
    ) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(self.progress_sql(migration, direction, checksum, hashes, total))
            if error:
                cursor.execute(self.progress_error_sql(migration, direction, error))

    def flight_xid(self, migration: Migration, direction: str) -> str | None:
        """Return the transaction id that wrote ``migration``'s progress row (its in-flight mark, when it has one).

        An object whose catalog row is newer was created after the mark: by the statement in flight.
        """
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT xmin::text FROM {self.qprogress} WHERE module = %s AND name = %s AND direction = %s",
                [migration.module, migration.name, direction],
            )
            row = cursor.fetchone()
        return row[0] if row else None

    def clear_progress_sql(self, migration: Migration) -> str:
        """SQL that forgets every progress row of ``migration`` (both directions)."""
        return (
            f"DELETE FROM {self.qprogress} WHERE module = {literal(migration.module)} "
            f"AND name = {literal(migration.name)}"
        )

    def forget_progress(self, module: str, name: str) -> int:
        """Remove the progress rows of one migration; return how many there were."""
        with self.connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {self.qprogress} WHERE module = %s AND name = %s", [module, name])
            return cursor.rowcount

    def record_adopted(self, rows: list[tuple[Migration, datetime | None]]) -> int:
        """Record migrations another tool applied, with the time it applied them (None: now); return how many.

        One INSERT in the caller's transaction; rows nixmig recorded already are left alone.
        """
        if not rows:
            return 0
        placeholders = ", ".join(["(%s, %s, %s, COALESCE(%s, now()))"] * len(rows))
        params = [p for m, applied_at in rows for p in (m.name, m.module, m.checksum, applied_at)]
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {self.qtable} (name, module, checksum, applied_at) VALUES {placeholders} "
                f"ON CONFLICT (module, name) DO NOTHING",
                params,
            )
            return cursor.rowcount
