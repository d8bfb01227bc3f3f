"""Run migrations against one connection. Never prints: reports through a callback.

A transactional migration is ONE simple-protocol query:
``BEGIN; SET LOCAL ...; <file>\\n; INSERT INTO migrations ...; COMMIT;`` -- sent with no
parameters, so ``%`` and ``$$ ... ; ... $$`` bodies reach the server untouched, the record
is written in the same transaction as the body, and applying it costs one round trip.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Callable

from django.db import DatabaseError, transaction

from . import conf
from .exceptions import MigrationFailed, NixmigError
from .plan import Entry
from .recorder import Recorder, literal
from .tree import TIMEOUT_RE, Directives, line_of

if TYPE_CHECKING:  # pglast costs ~30 ms to import; sqlmigrate_status never needs it
    from .sqltext import Prepared

LOCK_NOT_AVAILABLE = "55P03"


def _timeout(value, setting: str) -> str:
    value = str(value).strip()
    if not TIMEOUT_RE.match(value):
        raise NixmigError(f"NIXMIG[{setting!r}] = {value!r} is not a duration; use e.g. '10s', '500ms' or '0' (off).")
    return value


def _pg_error(exc: BaseException):
    """Return the psycopg error behind a Django DatabaseError."""
    return exc.__cause__ if getattr(exc.__cause__, "diag", None) is not None else exc


def _describe(exc: BaseException) -> tuple[str, str | None]:
    err = _pg_error(exc)
    diag = getattr(err, "diag", None)
    sqlstate = getattr(err, "sqlstate", None)
    message = (diag.message_primary if diag and diag.message_primary else str(err).strip().splitlines()[0])
    extras = []
    if diag is not None:
        if diag.message_detail:
            extras.append(f"Detail: {diag.message_detail}")
        if diag.message_hint:
            extras.append(f"Hint: {diag.message_hint}")
        if diag.context and "PL/pgSQL" in (diag.context or ""):
            extras.append(f"Context: {diag.context.strip().splitlines()[0]}")
    text = message + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
    if extras:
        text += ". " + " ".join(extras)
    return text, sqlstate


def _replayable(sqlstate: str | None) -> bool:
    """True when replaying the failed SQL would fail the same way (not a timeout, lock, deadlock or lost connection)."""
    return bool(sqlstate) and sqlstate[:2] not in ("08", "40", "53", "55", "57", "58", "XX")


def _position(exc: BaseException) -> int | None:
    diag = getattr(_pg_error(exc), "diag", None)
    pos = diag.statement_position if diag is not None else None
    return int(pos) - 1 if pos else None


class Executor:
    """Apply and roll back planned migrations on one Django connection."""

    def __init__(self, connection, recorder: Recorder, callback: Callable[..., None] | None = None):
        self.connection = connection
        self.recorder = recorder
        self.callback = callback or (lambda event, **data: None)
        self.lock_timeout = _timeout(conf.get("LOCK_TIMEOUT"), "LOCK_TIMEOUT")
        self.statement_timeout = _timeout(conf.get("STATEMENT_TIMEOUT"), "STATEMENT_TIMEOUT")
        self.retries = int(conf.get("LOCK_RETRIES"))

    # -- public ----------------------------------------------------------------------------

    def apply(self, entries: list[Entry], prepared: dict[str, Prepared], *, fake: bool = False,
              atomic: bool = False) -> list[Entry]:
        """Apply ``entries`` in order; return those applied. Stops at the first failure."""
        return self._run("up", entries, prepared, fake, atomic)

    def unapply(self, entries: list[Entry], prepared: dict[str, Prepared], *, fake: bool = False) -> list[Entry]:
        """Roll back ``entries`` in the given order (most recent first)."""
        return self._run("down", entries, prepared, fake, False)

    # -- internals -------------------------------------------------------------------------

    def _run(self, direction, entries, prepared, fake, atomic) -> list[Entry]:
        done: list[Entry] = []
        total = len(entries)
        if atomic:
            if any(prepared[e.id].no_transaction for e in entries if e.id in prepared):
                bad = [e.id for e in entries if e.id in prepared and prepared[e.id].no_transaction]
                raise NixmigError(f"--atomic can't include no-transaction migrations ({', '.join(bad)}): they run "
                                  "outside any transaction. Apply them without --atomic.")
            try:
                with transaction.atomic(using=self.connection.alias):
                    for index, entry in enumerate(entries, 1):
                        self._one(direction, entry, prepared.get(entry.id), fake, True, index, total, done)
            except MigrationFailed as exc:
                raise MigrationFailed(str(exc).replace(
                    "is not recorded;", "is not recorded, and with --atomic nothing of this run was applied;"),
                    migration_id=exc.migration_id, sqlstate=exc.sqlstate, applied=()) from None
            return done
        for index, entry in enumerate(entries, 1):
            self._one(direction, entry, prepared.get(entry.id), fake, False, index, total, done)
        return done

    def finish_sql(self, direction: str, entry: Entry) -> str:
        """SQL that records (up) or forgets (down) ``entry``."""
        return (self.recorder.record_sql(entry.migration) if direction == "up"
                else self.recorder.unrecord_sql(entry.record))

    def query_for(self, direction: str, entry: Entry, prep: Prepared | None, *, fake: bool = False,
                  in_tx: bool = False) -> tuple[str, str]:
        """Return (prefix, query): the one query string that runs a transactional migration and its record."""
        body = "" if fake or prep is None else prep.body
        directives = Directives() if fake or prep is None else prep.file.directives
        prefix = ("" if in_tx else "BEGIN; ") + self._settings(directives, True) + "\n"
        query = f"{prefix}{body}\n;\n{self.finish_sql(direction, entry)};" + ("" if in_tx else " COMMIT;")
        return prefix, query

    def preview(self, direction: str, entries: list[Entry], prepared: dict[str, Prepared], *, fake: bool = False,
                atomic: bool = False) -> list[tuple[Entry, list[str]]]:
        """Return, per entry, the exact query strings a run would send (nothing is sent)."""
        out = []
        for entry in entries:
            prep = None if fake else prepared.get(entry.id)
            if prep is not None and prep.no_transaction:
                texts = [prep.body[s.start:s.end].strip() + ";" for s in prep.analysis.statements]
                queries = [self._settings(prep.file.directives, False), *texts,
                           f"BEGIN; {self.finish_sql(direction, entry)}; "
                           f"{self.recorder.clear_progress_sql(entry.migration, direction)}; COMMIT;",
                           "RESET lock_timeout; RESET statement_timeout;"]
            else:
                queries = [self.query_for(direction, entry, prep, fake=fake, in_tx=atomic)[1]]
            out.append((entry, queries))
        if atomic and out:
            out[0][1].insert(0, "BEGIN;")
            out[-1][1].append("COMMIT;")
        return out

    def _one(self, direction, entry, prep, fake, in_tx, index, total, done) -> None:
        self.callback("start", direction=direction, entry=entry, index=index, total=total, fake=fake)
        started = time.perf_counter()
        if prep is not None and prep.no_transaction and not fake:
            self._no_transaction(direction, entry, prep, self.finish_sql(direction, entry), done)
        else:
            if prep is not None and not fake and prep.body.strip():
                self.callback("sql", entry=entry, sql=prep.file.text, own_transaction=prep.own_transaction)
            self._transactional(direction, entry, None if fake else prep, fake, in_tx, done)
        done.append(entry)
        self.callback("success", direction=direction, entry=entry, index=index, total=total, fake=fake,
                      ms=(time.perf_counter() - started) * 1000)

    def _settings(self, directives: Directives, local: bool) -> str:
        scope = "SET LOCAL" if local else "SET"
        return (f"{scope} lock_timeout = {literal(directives.lock_timeout or self.lock_timeout)}; "
                f"{scope} statement_timeout = {literal(directives.statement_timeout or self.statement_timeout)};")

    def _transactional(self, direction, entry, prep, fake, in_tx, done) -> None:
        prefix, query = self.query_for(direction, entry, prep, fake=fake, in_tx=in_tx)
        body = prep.body if prep is not None else ""
        attempt = 0
        while True:
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute(query)
                return
            except DatabaseError as exc:
                if not in_tx:
                    self._rollback()
                text, sqlstate = _describe(exc)
                if sqlstate == LOCK_NOT_AVAILABLE and not in_tx and attempt < self.retries:
                    attempt += 1
                    delay = min(2 ** (attempt - 1), 30)
                    self.callback("retry", entry=entry, attempt=attempt, retries=self.retries, delay=delay,
                                  reason=text)
                    time.sleep(delay)
                    continue
                line = None
                pos = _position(exc)
                if pos is not None and prep is not None:
                    offset = pos - len(prefix)
                    if 0 <= offset <= len(body):
                        line = line_of(body, offset)
                if line is None and prep is not None and not in_tx and _replayable(sqlstate):
                    line = self._locate(prep)
                raise self._failure(direction, entry, prep, line, text, sqlstate, done,
                                    "It was rolled back and is not recorded;" if direction == "up" else
                                    "It was rolled back and stays recorded as applied;") from None

    def _locate(self, prep: Prepared) -> int | None:
        """Return the line of the failing statement by replaying the file one statement at a time.

        PostgreSQL gives no error position for errors such as a DROP that other objects depend
        on. The replay runs in a transaction that is always rolled back, so it changes nothing.
        """
        statements = [s for s in prep.analysis.statements if not s.transaction_control]
        if len(statements) <= 1:
            return statements[0].line if statements else None
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("BEGIN; " + self._settings(prep.file.directives, True))
                for s in statements:
                    try:
                        cursor.execute(prep.body[s.start:s.end])
                    except DatabaseError as exc:
                        pos = _position(exc)
                        return line_of(prep.body, s.start + pos) if pos is not None else s.line
        except DatabaseError:
            return None
        finally:
            self._rollback()
        return None

    def _no_transaction(self, direction, entry, prep: Prepared, finish, done) -> None:
        m = entry.migration
        statements = prep.analysis.statements
        texts = [prep.body[s.start:s.end] for s in statements]
        hashes = [hashlib.sha256(t.strip().encode()).hexdigest() for t in texts]
        total = len(texts)
        start = 0
        progress = entry.progress if entry.progress and entry.progress.direction == direction else None
        if progress is not None:
            k = progress.statements_done
            if tuple(hashes[:k]) != progress.statement_hashes:
                raise MigrationFailed(
                    f"{m.id}: its no-transaction {direction} file {prep.file.path} stopped earlier after statement "
                    f"{k}, and statements 1..{k} have been edited since, so nixmig can't tell what is applied. "
                    "Bring the database and the file in line by hand, then delete its progress row (see README, "
                    "'Recovering a failed no-transaction migration') and run again.", migration_id=m.id,
                    applied=tuple(e.id for e in done))
            start = k
            self.callback("resume", entry=entry, statement=k + 1, total=total)
        self.recorder.ensure_progress_table()
        if progress is None:
            self.recorder.save_progress(m, direction, prep.file.checksum, [], total, None)
        with self.connection.cursor() as cursor:
            cursor.execute(self._settings(prep.file.directives, False))
        try:
            for k in range(start, total):
                stmt = statements[k]
                self.callback("statement", entry=entry, index=k + 1, total=total, line=stmt.line, sql=texts[k])
                attempt = 0
                while True:
                    try:
                        if stmt.builds_index:
                            self._drop_invalid_index(entry, stmt)
                        with self.connection.cursor() as cursor:
                            cursor.execute(texts[k])
                        break
                    except DatabaseError as exc:
                        text, sqlstate = _describe(exc)
                        if sqlstate == LOCK_NOT_AVAILABLE and attempt < self.retries:
                            attempt += 1
                            delay = min(2 ** (attempt - 1), 30)
                            self.callback("retry", entry=entry, attempt=attempt, retries=self.retries,
                                          delay=delay, reason=text)
                            time.sleep(delay)
                            continue
                        pos = _position(exc)
                        line = line_of(prep.body, stmt.start + pos) if pos is not None else stmt.line
                        self.recorder.save_progress(m, direction, prep.file.checksum, hashes[:k], total, text)
                        applied_part = (f"statements 1..{k} of {total} are applied and recorded as progress, so "
                                        f"the next sqlmigrate_{direction} resumes at statement {k + 1};"
                                        if k else "no statement of it was applied;")
                        raise self._failure(direction, entry, prep, line, text, sqlstate, done,
                                            f"It failed at statement {k + 1} of {total} (no-transaction file): "
                                            f"{applied_part} it is not recorded;") from None
                self.recorder.save_progress(m, direction, prep.file.checksum, hashes[:k + 1], total, None)
            with self.connection.cursor() as cursor:
                cursor.execute(f"BEGIN; {finish}; {self.recorder.clear_progress_sql(m, direction)}; COMMIT;")
        finally:
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute("RESET lock_timeout; RESET statement_timeout;")
            except DatabaseError:
                pass

    def _drop_invalid_index(self, entry, stmt) -> None:
        """Drop the INVALID index an earlier, failed or killed run of this CREATE INDEX CONCURRENTLY left.

        Without this the statement would fail with 'already exists', or, with IF NOT EXISTS, skip
        and leave an index that is maintained on every write but never used.
        """
        table, name = stmt.builds_index
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.indrelid = to_regclass(%s) AND c.relname = %s AND NOT i.indisvalid", [table, name])
            row = cursor.fetchone()
            if row is None:
                return
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row[0]}")
        self.callback("invalid_index", entry=entry, index=row[0], line=stmt.line)

    def _rollback(self) -> None:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except DatabaseError:
            pass

    def _failure(self, direction, entry, prep, line, text, sqlstate, done, what) -> MigrationFailed:
        verb = "Applying" if direction == "up" else "Rolling back"
        where = f"{prep.file.path}" + (f" line {line}" if line else "") if prep else "its tracking row"
        before = ", ".join(e.id for e in done)
        kept = (f"{len(done)} migration(s) {'applied' if direction == 'up' else 'rolled back'} before it in this "
                f"run stay so ({before}); later ones were not attempted." if done else
                "nothing else ran in this run.")
        return MigrationFailed(
            f"{verb} {entry.id} failed at {where}: {text.rstrip('.')}. {what} {kept} Fix the SQL and run "
            f"sqlmigrate_{direction} again.", migration_id=entry.id, sqlstate=sqlstate,
            applied=tuple(e.id for e in done))
