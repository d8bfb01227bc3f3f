"""Run migrations against one connection. Never prints: reports through a callback.

A transactional migration is ONE simple-protocol query:
``BEGIN; SET LOCAL ...; <file>\\n; INSERT INTO migrations ...; COMMIT;`` -- sent with no
parameters, so ``%`` and ``$$ ... ; ... $$`` bodies reach the server untouched, the record
is written in the same transaction as the body, and applying it costs one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction

from . import conf, leftovers, notx
from .exceptions import MigrationFailed, NixmigError
from .notx import resume_problem
from .pgerrors import (
    ACTIVE_SQL_TRANSACTION,
    LOCK_NOT_AVAILABLE,
    cause,
    connection_lost,
    describe,
    locate,
    position,
    replayable,
)
from .plan import Entry, RunOptions
from .recorder import Recorder, literal
from .reports import failure, notx_truth, unkept_truth
from .tree import Directives, line_of

if TYPE_CHECKING:  # pglast costs ~30 ms to import; sqlmigrate_status never needs it
    from django.db.backends.postgresql.base import DatabaseWrapper

    from .leftovers import Found
    from .sqltext import Prepared, Statement


class Executor:
    """Apply and roll back planned migrations on one Django connection."""

    def __init__(
        self, connection: DatabaseWrapper, recorder: Recorder, callback: Callable[..., None] | None = None
    ):
        self.connection = connection
        self.recorder = recorder
        self.callback = callback or (lambda event, **data: None)
        self.lock_timeout = conf.duration("LOCK_TIMEOUT")
        self.statement_timeout = conf.duration("STATEMENT_TIMEOUT")
        self.retries = int(conf.get("LOCK_RETRIES"))

    # -- public ----------------------------------------------------------------------------

    def run(self, entries: list[Entry], prepared: dict[str, Prepared], options: RunOptions) -> list[Entry]:
        """Run ``entries`` in order (most recent first for down); return those done. Stops at the first failure."""
        if not options.fake:
            refused = [
                msg for e in entries if (msg := resume_problem(e, prepared.get(e.id), options.direction))
            ]
            if refused:
                raise MigrationFailed("Nothing was run. " + " ".join(refused))
        bad = [e.id for e in entries if e.id in prepared and prepared[e.id].no_transaction]
        if options.atomic and bad and not options.fake:
            raise NixmigError(
                f"--atomic can't include no-transaction migrations ({', '.join(bad)}): they run "
                "outside any transaction. Apply them without --atomic."
            )
        done: list[Entry] = []
        with transaction.atomic(using=self.connection.alias) if options.atomic else nullcontext():
            for index, entry in enumerate(entries, 1):
                self._one(entry, prepared.get(entry.id), options, index, len(entries), done)
        return done

    def finish_sql(self, direction: str, entry: Entry) -> str:
        """SQL that records (up) or forgets (down) ``entry``, and clears any progress it had."""
        sql = (
            self.recorder.record_sql(entry.files)
            if direction == "up"
            else self.recorder.unrecord_sql(entry.recorded)
        )
        if entry.progress is not None:
            sql += "; " + self.recorder.clear_progress_sql(entry.files)
        return sql

    def query_for(
        self, direction: str, entry: Entry, prep: Prepared | None, *, fake: bool = False, in_tx: bool = False
    ) -> tuple[str, str]:
        """Return (prefix, query): the one query string that runs a transactional migration and its record."""
        body = "" if fake or prep is None else prep.body
        directives = Directives() if fake or prep is None else prep.file.directives
        prefix = ("" if in_tx else "BEGIN; ") + self._settings(directives, True) + "\n"
        query = f"{prefix}{body}\n;\n{self.finish_sql(direction, entry)};" + ("" if in_tx else " COMMIT;")
        return prefix, query

    def preview(
        self,
        direction: str,
        entries: list[Entry],
        prepared: dict[str, Prepared],
        *,
        fake: bool = False,
        atomic: bool = False,
    ) -> list[tuple[Entry, list[str]]]:
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

    def _one(
        self,
        entry: Entry,
        prep: Prepared | None,
        options: RunOptions,
        index: int,
        total: int,
        done: list[Entry],
    ) -> None:
        direction = options.direction
        self.callback("start", direction=direction, entry=entry, index=index, total=total, fake=options.fake)
        started = time.perf_counter()
        try:
            if prep is not None and prep.no_transaction and not options.fake:
                self._no_transaction(entry, prep, options, done)
            else:
                if prep is not None and not options.fake and prep.body.strip():
                    self.callback(
                        "sql", entry=entry, sql=prep.file.text, own_transaction=prep.own_transaction
                    )
                self._transactional(entry, None if options.fake else prep, options, done)
        except DatabaseError as exc:  # before any of its SQL was sent: the connection is gone
            text, sqlstate = describe(exc)
            raise failure(
                entry,
                prep,
                None,
                text,
                sqlstate,
                done,
                options,
                "This run sent none of its statements; sqlmigrate_status shows its state. Run "
                f"sqlmigrate_{direction} again once the database answers.",
                fix=False,
            ) from None
        done.append(entry)
        self.callback(
            "success",
            direction=direction,
            entry=entry,
            index=index,
            total=total,
            fake=options.fake,
            ms=(time.perf_counter() - started) * 1000,
        )

    def _settings(self, directives: Directives, local: bool) -> str:
        scope = "SET LOCAL" if local else "SET"
        path = f"{scope} search_path = {self._search_path()}; " if self.recorder.schema else ""
        return (
            f"{path}{scope} lock_timeout = {literal(directives.lock_timeout or self.lock_timeout)}; "
            f"{scope} statement_timeout = {literal(directives.statement_timeout or self.statement_timeout)};"
        )

    def _search_path(self) -> str:
        """The search_path of a schema target: its schema, then public (for shared objects)."""
        assert self.recorder.schema is not None, "only a schema target has a search_path of its own"
        return f"{self.connection.ops.quote_name(self.recorder.schema)}, public"

    def _execute_with_retries(
        self, entry: Entry, query: str, *, rollback: bool, finished: Callable[[], bool] | None = None
    ) -> None:
        """Send ``query``; retry after lock_not_available with backoff. Raises DatabaseError.

        ``finished`` runs before each retry; it cleans up what the attempt left and says whether that
        completed the statement (then it is not sent again).
        """
        attempt, clean_first = 0, False
        while True:
            try:
                if clean_first and finished is not None and finished():
                    return
                with self.connection.cursor() as cursor:
                    cursor.execute(query)
                return
            except DatabaseError as exc:  # a clean-up that times out on the same lock counts as an attempt
                if rollback:
                    self._rollback()
                text, sqlstate = describe(exc)
                if sqlstate != LOCK_NOT_AVAILABLE or attempt >= self.retries:
                    raise
                attempt += 1
                delay = min(2 ** (attempt - 1), 30)
                self.callback(
                    "retry", entry=entry, attempt=attempt, retries=self.retries, delay=delay, reason=text
                )
                time.sleep(delay)
                clean_first = True

    def _transactional(
        self, entry: Entry, prep: Prepared | None, options: RunOptions, done: list[Entry]
    ) -> None:
        in_tx = options.atomic
        prefix, query = self.query_for(options.direction, entry, prep, fake=options.fake, in_tx=in_tx)
        try:
            self._execute_with_retries(entry, query, rollback=not in_tx)
        except DatabaseError as exc:
            text, sqlstate = describe(exc)
            line = None
            pos = position(exc)
            if pos is not None and prep is not None:
                offset = pos - len(prefix)
                if 0 <= offset <= len(prep.body):
                    line = line_of(prep.body, offset)
            if line is None and prep is not None and not in_tx and replayable(sqlstate):
                line = locate(self.connection, prep, "BEGIN; " + self._settings(prep.file.directives, True))
            if options.atomic:
                truth = (
                    f"It was rolled back, and with --atomic so was everything else of this run: nothing of it "
                    f"was {options.done_verb}."
                )
                raise failure(
                    entry, prep, line, text, sqlstate, (), options, truth, cause=cause(exc, sqlstate)
                ) from None
            truth = (
                "It was rolled back and is not recorded."
                if options.direction == "up"
                else "It was rolled back and stays recorded as applied."
            )
            if connection_lost(exc, sqlstate):
                truth = (
                    "The connection was lost while it ran; it and its record are one transaction, so both "
                    "committed or neither did: sqlmigrate_status shows which."
                )
            if entry.progress is not None:  # --fake of a partly run migration
                truth += " Its progress row is kept."
            raise failure(
                entry, prep, line, text, sqlstate, done, options, truth, cause=cause(exc, sqlstate)
            ) from None

    # -- no-transaction files ----------------------------------------------------------------

    def _no_transaction_queries(
        self, direction: str, entry: Entry, prep: Prepared, start: int = 0
    ) -> list[tuple[str, int]]:
        finish = self.finish_sql(direction, entry)
        if entry.progress is None:  # this run writes progress rows; the record's transaction clears them
            finish += "; " + self.recorder.clear_progress_sql(entry.files)
        return notx.queries(
            self.recorder, self._settings(prep.file.directives, False), finish, direction, entry, prep, start
        )

    def _no_transaction(self, entry: Entry, prep: Prepared, options: RunOptions, done: list[Entry]) -> None:
        direction = options.direction
        statements = prep.analysis.statements
        total = len(statements)
        progress = entry.progress
        start = progress.statements_done if progress is not None else 0
        if self.recorder.schema:  # before the resume check below: its unqualified names are the schema's
            self._send(entry, f"SET search_path = {self._search_path()}")
        if progress is not None:
            self.callback("resume", entry=entry, statement=start + 1, total=total)
            if start < total:  # settling waits for locks too: under the file's timeouts
                self._send(entry, self._settings(prep.file.directives, False))
                try:
                    start = self._settle(entry, prep, direction, start, progress.in_flight)
                except DatabaseError as exc:  # the marker stays: what the statement left is still unknown
                    stmt = statements[start]
                    raise self._notx_failure(
                        entry, prep, options, done, start, stmt.line, exc, [], False
                    ) from None
        self.recorder.ensure_progress_table()
        queries = self._no_transaction_queries(direction, entry, prep, start)
        ran = start  # statements of this file known to have run
        try:
            for query, k in queries:
                if k < 0:
                    self._send(entry, query)
                    continue
                stmt = statements[k]
                text_k = prep.body[stmt.start : stmt.end]
                self.callback("statement", entry=entry, index=k + 1, total=total, line=stmt.line, sql=text_k)
                since = self._since(entry, direction, stmt)
                cleaned: list[str] = []
                if stmt.effect is not None and stmt.effect.kind == "index" and stmt.effect.name:
                    self._clean(entry, stmt, k, None, cleaned)  # an INVALID index a failed earlier run left
                try:
                    self._send_statement(
                        entry, query, text_k, stmt, partial(self._clean, entry, stmt, k, since, cleaned)
                    )
                    problem = self._broken(stmt, since)
                except DatabaseError as exc:
                    self._rollback()
                    pos, line = position(exc), stmt.line
                    if pos is not None:
                        offset = pos - (0 if stmt.no_transaction else query.index(text_k))
                        if 0 <= offset <= len(text_k):
                            line = line_of(prep.body, stmt.start + offset)
                    raise self._notx_failure(
                        entry, prep, options, done, k, line, exc, cleaned, True, since
                    ) from None
                if problem:
                    raise self._unkept(entry, prep, options, done, k, problem, since)
                ran = k + 1
        except DatabaseError as exc:  # a progress or record write failed (connection lost)
            text, sqlstate = describe(exc)
            raise failure(
                entry,
                prep,
                None,
                text,
                sqlstate,
                done,
                options,
                f"The connection failed after statement {ran} of {total} of this no-transaction "
                "file ran; sqlmigrate_status shows how far it got, and the next run resumes "
                "there.",
                fix=False,
            ) from None
        finally:
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute(
                        "RESET lock_timeout; RESET statement_timeout;"
                        + (" RESET search_path;" if self.recorder.schema else "")
                    )
            except DatabaseError:
                pass

    def _send(self, entry: Entry, query: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(query)

    def _send_statement(
        self, entry: Entry, query: str, text: str, stmt: Statement, clean: Callable[[], Found | None]
    ) -> None:
        try:
            # Before a lock-timeout retry of a statement sent alone, remove what the attempt left
            # (or finish it: a pending detach) -- a retry must not build a second index or skip a broken one.
            finished = (lambda: bool((found := clean()) and found.done)) if stmt.no_transaction else None
            self._execute_with_retries(entry, query, rollback=True, finished=finished)
        except DatabaseError as exc:
            if describe(exc)[1] != ACTIVE_SQL_TRANSACTION or stmt.no_transaction:
                raise
            # A statement nixmig did not know PostgreSQL refuses in a transaction block: send it alone,
            # then the rest of the query (its progress, or the record) in a transaction of its own.
            self._execute_with_retries(entry, text, rollback=False)
            rest = query[query.index(text) + len(text) :].lstrip().removeprefix(";").strip()
            self._send(entry, "BEGIN; " + rest)

    def _since(self, entry: Entry, direction: str, stmt: Statement) -> str | None:
        """The transaction id of the in-flight mark, for a statement whose leftovers only it tells apart."""
        effect = stmt.effect
        if effect is None or effect.kind != "index" or effect.name:
            return None
        return self.recorder.flight_xid(entry.files, direction)

    def _clean(
        self, entry: Entry, stmt: Statement, k: int, since: str | None, cleaned: list[str]
    ) -> Found | None:
        """Remove (or finish) what an earlier attempt of statement k+1 left in the catalog; say so."""
        with self.connection.cursor() as cursor:
            found = leftovers.inspect(cursor, stmt, since)
        for left in found.leftovers if found else ():
            self._send(entry, left.fix)
            cleaned.append(left.what)
            self.callback(
                "cleaned", entry=entry, statement=k + 1, line=stmt.line, what=left.what, sql=left.fix
            )
            if left.finishes:
                return leftovers.Found(True)
        return found

    def _broken(self, stmt: Statement, since: str | None) -> str | None:
        """Why the catalog is not in the state statement ``stmt`` (just run, no error) promises; None when it is."""
        if not stmt.no_transaction:
            return None
        with self.connection.cursor() as cursor:
            found = leftovers.inspect(cursor, stmt, since)
        return found.problem if found is not None else None

    def _settle(self, entry: Entry, prep: Prepared, direction: str, k: int, in_flight: bool) -> int:
        """Before a resume at statement k+1: clean up or finish what its last attempt left; return where to start.

        A statement that can't share a transaction with its progress row may have finished (or half
        finished) before the row said so: its result is checked in the catalog, not assumed.
        """
        stmt = prep.analysis.statements[k]
        found = self._clean(entry, stmt, k, self._since(entry, direction, stmt) if in_flight else None, [])
        if found is None or not found.done:
            return k
        self.callback("already_done", entry=entry, statement=k + 1, line=stmt.line, what=stmt.no_transaction)
        self.recorder.save_progress(
            entry.files,
            direction,
            prep.file.checksum,
            notx.hashes(prep)[: k + 1],
            len(prep.analysis.statements),
        )
        return k + 1

    def _notx_failure(
        self,
        entry: Entry,
        prep: Prepared,
        options: RunOptions,
        done: list[Entry],
        k: int,
        line: int | None,
        exc: DatabaseError,
        cleaned: list[str],
        sent: bool,
        since: str | None = None,
    ) -> MigrationFailed:
        """Statement k+1 (sent, or being settled before a resume) failed: keep what may have run, say why."""
        text, sqlstate = describe(exc)
        why = cause(exc, sqlstate)
        stmt = prep.analysis.statements[k]
        settled = sent
        if sent and stmt.no_transaction:
            try:  # what the failed attempt left (a failed CREATE INDEX CONCURRENTLY leaves an INVALID index)
                self._clean(entry, stmt, k, since, cleaned)
            except DatabaseError:
                settled = False
        if settled:
            settled = self._save_failure(
                entry, options.direction, prep, k, len(prep.analysis.statements), text
            )
        state = (
            "settled" if settled else "in flight" if stmt.no_transaction or not sent else "one transaction"
        )
        truth = notx_truth(
            options.direction,
            k,
            len(prep.analysis.statements),
            cause=why,
            state=state,
            cleaned=cleaned,
            attempts=self.retries + 1,
            resuming=not sent,
        )
        return failure(
            entry,
            prep,
            line,
            text,
            sqlstate,
            done,
            options,
            truth,
            fix=why is None and state == "settled",
            cause=why,
        )

    def _unkept(
        self,
        entry: Entry,
        prep: Prepared,
        options: RunOptions,
        done: list[Entry],
        k: int,
        problem: str,
        since: str | None,
    ) -> MigrationFailed:
        """Statement k+1 ended without an error, but the catalog is not as it promises: a failure, never OK."""
        stmt = prep.analysis.statements[k]
        cleaned: list[str] = []
        try:
            self._clean(entry, stmt, k, since, cleaned)
            settled = self._save_failure(
                entry, options.direction, prep, k, len(prep.analysis.statements), problem
            )
        except DatabaseError:
            settled = False
        truth = unkept_truth(
            options.direction, k, len(prep.analysis.statements), problem, cleaned, kept=not settled
        )
        return failure(entry, prep, stmt.line, problem, None, done, options, truth)

    def _save_failure(
        self, entry: Entry, direction: str, prep: Prepared, ran: int, total: int, error: str
    ) -> bool:
        """After statement ran+1 failed and left nothing: keep exactly 1..ran as progress, with the error.

        Return False when the connection is gone: the row then still says what ran, with its mark.
        """
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(
                    f"BEGIN; {notx.failed_progress_sql(self.recorder, entry, direction, prep, ran, error)}; "
                    "COMMIT;"
                )
            return True
        except DatabaseError:
            self._rollback()
            return False

    def _rollback(self) -> None:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except DatabaseError:
            pass
