"""Run migrations against one connection. Never prints: reports through a callback.

A transactional migration is ONE simple-protocol query:
``BEGIN; SET LOCAL ...; <file>\\n; INSERT INTO migrations ...; COMMIT;`` -- sent with no
parameters, so ``%`` and ``$$ ... ; ... $$`` bodies reach the server untouched, the record
is written in the same transaction as the body, and applying it costs one round trip.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
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
ACTIVE_SQL_TRANSACTION = "25001"  # "... cannot run inside a transaction block"


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


def _terminated(text: str) -> str:
    """Return a statement with its ';' (on a line of its own if its last line ends in a -- comment)."""
    text = text.strip()
    return text + ("\n;" if "--" in text.rsplit("\n", 1)[-1] else ";")


@dataclass(frozen=True)
class RunOptions:
    """How one run goes: the direction, and whether it fakes or runs all in one transaction."""

    direction: str = "up"  # "up" applies, "down" rolls back
    fake: bool = False  # write or remove the records only; run no SQL
    atomic: bool = False  # the whole run in one transaction (up only)

    @property
    def verb(self) -> str:
        return "Applying" if self.direction == "up" else "Rolling back"

    @property
    def done_verb(self) -> str:
        return "applied" if self.direction == "up" else "rolled back"


def _ran(k: int) -> str:
    return "statement 1" if k == 1 else f"statements 1..{k}"


def statement_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def resume_problem(entry: Entry, prep: Prepared | None, direction: str) -> str | None:
    """Return why a partly run migration can't resume from ``prep``, or None when it can."""
    progress = entry.progress
    if progress is None or progress.direction != direction or prep is None:
        return None
    k = progress.statements_done
    kind = "up" if direction == "up" else "down"
    if not prep.no_transaction:
        return (f"{entry.id}: {_ran(k) if k else 'part of statement 1'} of its {kind} file ran as a no-transaction "
                f"file, but "
                f"{prep.file.relpath} no longer says '-- nixmig:no-transaction'; run as one transaction it would "
                "run them again. Put the directive back to resume.")
    n = len(progress.statement_hashes)  # the statements that ran, and one in flight if any
    hashes = tuple(statement_hash(prep.body[s.start:s.end]) for s in prep.analysis.statements[:n])
    if len(hashes) < n or hashes != tuple(progress.statement_hashes):
        what = f"{_ran(k)} of {prep.file.relpath} ran, and {'has' if k == 1 else 'have'}" if k else \
            f"statement 1 of {prep.file.relpath} was running when its runner stopped, and has"
        return (f"{entry.id}: {what} been edited since (or the file now has fewer statements), so nixmig can't "
                "tell what is applied. Restore the file as it was, or bring the database in line by hand and "
                "settle it as sqlmigrate_status describes.")
    return None


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

    def run(self, entries: list[Entry], prepared: dict[str, Prepared], options: RunOptions) -> list[Entry]:
        """Run ``entries`` in order (most recent first for down); return those done. Stops at the first failure."""
        if not options.fake:
            refused = [msg for e in entries if (msg := resume_problem(e, prepared.get(e.id), options.direction))]
            if refused:
                raise MigrationFailed("Nothing was run. " + " ".join(refused))
        done: list[Entry] = []
        total = len(entries)
        if not options.atomic:
            for index, entry in enumerate(entries, 1):
                self._one(entry, prepared.get(entry.id), options, index, total, done)
            return done
        bad = [e.id for e in entries if e.id in prepared and prepared[e.id].no_transaction]
        if bad and not options.fake:
            raise NixmigError(f"--atomic can't include no-transaction migrations ({', '.join(bad)}): they run "
                              "outside any transaction. Apply them without --atomic.")
        with transaction.atomic(using=self.connection.alias):
            for index, entry in enumerate(entries, 1):
                self._one(entry, prepared.get(entry.id), options, index, total, done)
        return done

    def finish_sql(self, direction: str, entry: Entry) -> str:
        """SQL that records (up) or forgets (down) ``entry``, and clears any progress it had."""
        sql = (self.recorder.record_sql(entry.migration) if direction == "up"
               else self.recorder.unrecord_sql(entry.record))
        if entry.progress is not None:
            sql += "; " + self.recorder.clear_progress_sql(entry.migration)
        return sql

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
        """Return, per entry, the exact query strings a run would send (nothing is sent).

        Replayed in order (e.g. with psql), they leave the database as a real run would:
        the progress rows of a no-transaction file included.
        """
        out = []
        progress_table = False
        for entry in entries:
            prep = None if fake else prepared.get(entry.id)
            if prep is not None and prep.no_transaction:
                queries = [] if progress_table else [self.recorder.progress_table_sql() + ";"]
                progress_table = True
                queries += [q for q, _ in self._no_transaction_queries(direction, entry, prep)]
            else:
                queries = [self.query_for(direction, entry, prep, fake=fake, in_tx=atomic)[1]]
            out.append((entry, queries))
        if atomic and out:
            out[0][1].insert(0, "BEGIN;")
            out[-1][1].append("COMMIT;")
        return out

    # -- one migration ---------------------------------------------------------------------

    def _one(self, entry: Entry, prep: Prepared | None, options: RunOptions, index: int, total: int,
             done: list[Entry]) -> None:
        direction = options.direction
        self.callback("start", direction=direction, entry=entry, index=index, total=total, fake=options.fake)
        started = time.perf_counter()
        if prep is not None and prep.no_transaction and not options.fake:
            self._no_transaction(entry, prep, options, done)
        else:
            if prep is not None and not options.fake and prep.body.strip():
                self.callback("sql", entry=entry, sql=prep.file.text, own_transaction=prep.own_transaction)
            self._transactional(entry, None if options.fake else prep, options, done)
        done.append(entry)
        self.callback("success", direction=direction, entry=entry, index=index, total=total, fake=options.fake,
                      ms=(time.perf_counter() - started) * 1000)

    def _settings(self, directives: Directives, local: bool) -> str:
        scope = "SET LOCAL" if local else "SET"
        return (f"{scope} lock_timeout = {literal(directives.lock_timeout or self.lock_timeout)}; "
                f"{scope} statement_timeout = {literal(directives.statement_timeout or self.statement_timeout)};")

    def _execute_with_retries(self, entry: Entry, query: str, *, rollback: bool) -> None:
        """Send ``query``; retry after lock_not_available with backoff. Raises DatabaseError."""
        attempt = 0
        while True:
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute(query)
                return
            except DatabaseError as exc:
                if rollback:
                    self._rollback()
                text, sqlstate = _describe(exc)
                if sqlstate != LOCK_NOT_AVAILABLE or attempt >= self.retries:
                    raise
                attempt += 1
                delay = min(2 ** (attempt - 1), 30)
                self.callback("retry", entry=entry, attempt=attempt, retries=self.retries, delay=delay, reason=text)
                time.sleep(delay)

    def _transactional(self, entry: Entry, prep: Prepared | None, options: RunOptions, done: list[Entry]) -> None:
        in_tx = options.atomic
        prefix, query = self.query_for(options.direction, entry, prep, fake=options.fake, in_tx=in_tx)
        try:
            self._execute_with_retries(entry, query, rollback=not in_tx)
        except DatabaseError as exc:
            text, sqlstate = _describe(exc)
            line = None
            pos = _position(exc)
            if pos is not None and prep is not None:
                offset = pos - len(prefix)
                if 0 <= offset <= len(prep.body):
                    line = line_of(prep.body, offset)
            if line is None and prep is not None and not in_tx and _replayable(sqlstate):
                line = self._locate(prep)
            if options.atomic:
                truth = (f"It was rolled back, and with --atomic so was everything else of this run: nothing of it "
                         f"was {options.done_verb}.")
                raise self._failure(entry, prep, line, text, sqlstate, (), options, truth) from None
            truth = ("It was rolled back and is not recorded." if options.direction == "up" else
                     "It was rolled back and stays recorded as applied.")
            if entry.progress is not None:  # --fake of a partly run migration
                truth += " Its progress row is kept."
            raise self._failure(entry, prep, line, text, sqlstate, done, options, truth) from None

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

    # -- no-transaction files ----------------------------------------------------------------

    def _no_transaction_queries(self, direction: str, entry: Entry, prep: Prepared,
                                start: int = 0) -> list[tuple[str, int]]:
        """Return (query, statement index) pairs that run statements ``start``.. of a no-transaction file.

        Every statement that can run in a transaction is sent as ``BEGIN; <statement>; <progress>;
        COMMIT;``, so it and the progress row that says it ran commit together; the last one also
        writes the record (up) or removes it (down) and the progress row. A statement PostgreSQL
        refuses in a transaction (CREATE INDEX CONCURRENTLY, VACUUM, ...) is sent alone, its
        progress row right after (index -1 marks such a follow-up query).
        """
        m = entry.migration
        statements = prep.analysis.statements
        texts = [prep.body[s.start:s.end] for s in statements]
        hashes = [statement_hash(t) for t in texts]
        total = len(texts)
        finish = self.finish_sql(direction, entry)
        if entry.progress is None:  # this run writes progress rows; the record's transaction clears them
            finish += "; " + self.recorder.clear_progress_sql(m)
        queries: list[tuple[str, int]] = [(self._settings(prep.file.directives, False), -1)]
        for k in range(start, total):
            last = k == total - 1
            after = finish if last else self.recorder.progress_sql(m, direction, prep.file.checksum,
                                                                   hashes[:k + 1], total)
            if statements[k].no_transaction:
                flight = self.recorder.progress_sql(m, direction, prep.file.checksum, hashes[:k + 1], total, k)
                queries.append((f"BEGIN; {flight}; COMMIT;", -1))
                queries.append((_terminated(texts[k]), k))
                queries.append((f"BEGIN; {after}; COMMIT;", -1))
            else:
                queries.append((f"BEGIN;\n{texts[k]}\n;\n{after}; COMMIT;", k))
        if start >= total:  # every statement ran before; only the record was missing
            queries.append((f"BEGIN; {finish}; COMMIT;", -1))
        queries.append(("RESET lock_timeout; RESET statement_timeout;", -1))
        return queries

    def _no_transaction(self, entry: Entry, prep: Prepared, options: RunOptions, done: list[Entry]) -> None:
        direction = options.direction
        statements = prep.analysis.statements
        total = len(statements)
        progress = entry.progress
        start = progress.statements_done if progress is not None else 0
        if progress is not None:
            self.callback("resume", entry=entry, statement=start + 1, total=total)
            if (progress.in_flight and start < total and statements[start].builds_index
                    and self._index_state(statements[start]) == "valid"):
                # The interrupted run finished this CREATE INDEX CONCURRENTLY but died before its
                # progress row: it must not run again ("already exists").
                self.callback("already_done", entry=entry, statement=start + 1, line=statements[start].line)
                self.recorder.save_progress(entry.migration, direction, prep.file.checksum,
                                            [statement_hash(prep.body[s.start:s.end])
                                             for s in statements[:start + 1]], total, None)
                start += 1
        self.recorder.ensure_progress_table()
        queries = self._no_transaction_queries(direction, entry, prep, start)
        ran = start  # statements of this file known to have run
        try:
            for query, k in queries:
                if k < 0:
                    self._send(entry, query)
                    continue
                stmt = statements[k]
                self.callback("statement", entry=entry, index=k + 1, total=total, line=stmt.line,
                              sql=prep.body[stmt.start:stmt.end])
                if stmt.builds_index:
                    self._drop_invalid_index(entry, stmt)
                try:
                    self._send_statement(entry, query, prep.body[stmt.start:stmt.end], stmt)
                except DatabaseError as exc:
                    self._rollback()
                    text, sqlstate = _describe(exc)
                    pos = _position(exc)
                    line = stmt.line
                    text_k = prep.body[stmt.start:stmt.end]
                    if pos is not None:
                        offset = pos - (0 if stmt.no_transaction else query.index(text_k))
                        if 0 <= offset <= len(text_k):
                            line = line_of(prep.body, stmt.start + offset)
                    self._save_failure(entry, direction, prep, ran, total, text)
                    raise self._failure(entry, prep, line, text, sqlstate, done, options,
                                        self._partial_truth(direction, k, total), fix=not ran) from None
                ran = k + 1
        except DatabaseError as exc:  # a progress or record write failed (connection lost)
            text, sqlstate = _describe(exc)
            raise self._failure(entry, prep, None, text, sqlstate, done, options,
                                f"The connection failed after statement {ran} of {total} of this no-transaction "
                                "file ran; sqlmigrate_status shows how far it got, and the next run resumes "
                                "there.", fix=False) from None
        finally:
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute("RESET lock_timeout; RESET statement_timeout;")
            except DatabaseError:
                pass

    def _send(self, entry: Entry, query: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(query)

    def _send_statement(self, entry: Entry, query: str, text: str, stmt) -> None:
        try:
            self._execute_with_retries(entry, query, rollback=True)
        except DatabaseError as exc:
            if _describe(exc)[1] != ACTIVE_SQL_TRANSACTION or stmt.no_transaction:
                raise
            # A statement nixmig did not know PostgreSQL refuses in a transaction block: send it alone,
            # then the rest of the query (its progress, or the record) in a transaction of its own.
            self._execute_with_retries(entry, text, rollback=False)
            rest = query[query.index(text) + len(text):].lstrip().removeprefix(";").strip()
            self._send(entry, "BEGIN; " + rest)

    def _save_failure(self, entry: Entry, direction: str, prep: Prepared, ran: int, total: int, error: str) -> None:
        """After statement ran+1 failed (so it did not run): keep exactly 1..ran as progress, with the error."""
        m = entry.migration
        if ran == 0:
            sql = self.recorder.clear_progress_sql(m)  # nothing ran: no progress (an in-flight mark is void)
        else:
            hashes = [statement_hash(prep.body[s.start:s.end]) for s in prep.analysis.statements[:ran]]
            sql = (self.recorder.progress_sql(m, direction, prep.file.checksum, hashes, total) + "; "
                   + self.recorder.progress_error_sql(m, direction, error))
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(f"BEGIN; {sql}; COMMIT;")
        except DatabaseError:
            self._rollback()  # the connection is gone: the row still says what ran (maybe with a mark)

    @staticmethod
    def _partial_truth(direction: str, k: int, total: int) -> str:
        """What a failure at statement k+1 of a no-transaction file leaves, said exactly."""
        kind = "up" if direction == "up" else "down"
        if direction == "up":
            if k == 0:
                return (f"It failed at statement 1 of {total} (no-transaction file): no statement of it ran, and it "
                        "is not recorded.")
            return (f"It failed at statement {k + 1} of {total} of its no-transaction {kind} file: {_ran(k)} "
                    f"ran and {'is' if k == 1 else 'are'} kept as progress, so it is partly applied and not recorded. "
                    "Fix the cause and run "
                    f"sqlmigrate_up again to resume at statement {k + 1} (statements that ran are not run again); "
                    "sqlmigrate_status lists the other ways out.")
        if k == 0:
            return (f"It failed at statement 1 of {total} of its no-transaction down file: no statement of it ran, "
                    "and it stays recorded as applied.")
        return (f"It failed at statement {k + 1} of {total} of its no-transaction down file: {_ran(k)} ran "
                f"and {'is' if k == 1 else 'are'} kept as progress, so it is partly rolled back and stays recorded "
                "as applied; sqlmigrate_up "
                f"refuses until this is settled. Fix the down file and run sqlmigrate_down again to resume at "
                f"statement {k + 1}; sqlmigrate_status lists the other ways out.")

    def _index_state(self, stmt) -> str | None:
        """Return 'valid', 'invalid' or None for the index a CREATE INDEX CONCURRENTLY statement builds."""
        table, name = stmt.builds_index
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = to_regclass(%s) AND c.relname = %s", [table, name])
            row = cursor.fetchone()
        return None if row is None else "valid" if row[0] else "invalid"

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

    def _failure(self, entry: Entry, prep: Prepared | None, line: int | None, text: str, sqlstate: str | None,
                 done, options: RunOptions, truth: str, *, fix: bool = True) -> MigrationFailed:
        where = f"{prep.file.path}" + (f" line {line}" if line else "") if prep else "its tracking row"
        done = list(done)
        if not done:
            kept = "Nothing else ran in this run." if not options.atomic else ""
        else:
            n = len(done)
            ids = (done[0].id if n == 1 else f"{done[0].id} and {done[1].id}" if n == 2 else
                   f"the first {done[0].id}, the last {done[-1].id}; sqlmigrate_status lists them all")
            kept = (f"{n} migration(s) {options.done_verb} before it in this run stay so ({ids}); later ones were "
                    "not attempted.")
        advice = f"Fix the SQL and run sqlmigrate_{options.direction} again." if fix else ""
        message = " ".join(part for part in (
            f"{options.verb} {entry.id} failed at {where}: {text.rstrip('.')}.", truth, kept, advice) if part)
        return MigrationFailed(message, migration_id=entry.id, sqlstate=sqlstate,
                               applied=tuple(e.id for e in done))
