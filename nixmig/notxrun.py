"""Run one no-transaction file: statement by statement, each checked in the catalog before it counts.

A statement PostgreSQL refuses in a transaction (CREATE INDEX CONCURRENTLY, REINDEX CONCURRENTLY,
DETACH PARTITION CONCURRENTLY, ...) can't commit with its progress row: it is marked in flight before
it is sent and done after. What it leaves when it fails, times out or its runner dies is read in the
catalog (``nixmig.leftovers``) and removed or finished before a retry or a resume; a failure that may
have left something keeps the in-flight mark. The engine never prints: it reports through the
executor's callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from django.db import DatabaseError

from . import leftovers, notx
from .exceptions import MigrationFailed
from .pgerrors import ACTIVE_SQL_TRANSACTION, cause, describe, position
from .reports import failure, notx_truth, unkept_truth
from .tree import line_of

if TYPE_CHECKING:
    from .executor import Executor
    from .leftovers import Found
    from .plan import Entry, RunOptions
    from .sqltext import Prepared, Statement


class NoTransactionRun:
    """Apply (or roll back) one no-transaction file for the executor, from where its progress says."""

    def __init__(
        self, executor: Executor, entry: Entry, prep: Prepared, options: RunOptions, done: list[Entry]
    ):
        self.ex = executor
        self.entry, self.prep, self.options, self.done = entry, prep, options, done
        self.direction = options.direction
        self.statements = prep.analysis.statements
        self.total = len(self.statements)
        self.ms = 0.0  # the time of the statements this run sent (with their progress rows): the file's time

    def run(self) -> None:
        ex, entry, progress = self.ex, self.entry, self.entry.progress
        start = progress.statements_done if progress is not None else 0
        if ex.recorder.schema:  # before the resume check below: its unqualified names are the schema's
            ex.send(f"SET search_path = {ex.search_path()}")
        if progress is not None:
            ex.callback("resume", entry=entry, statement=start + 1, total=self.total)
            if start < self.total:  # settling waits for locks too: under the file's timeouts
                ex.send(ex.settings(self.prep.file.directives, False))
                try:
                    start = self._settle(start, progress.in_flight)
                except DatabaseError as exc:  # the mark stays: what the statement left is still unknown
                    raise self._failed(
                        start, self.statements[start].line, exc, [], settled=False, sent=False
                    ) from None
        ex.recorder.ensure_progress_table()
        ran = start  # statements of this file known to have run
        try:
            for query, k in ex.no_transaction_queries(self.direction, entry, self.prep, start):
                if k < 0:
                    ex.send(query)
                    continue
                self._statement(query, k)
                ran = k + 1
            if self.direction == "up":  # the record's own time covered only the last statement's query
                ex.recorder.set_execution_ms(entry.files, self.ms)
        except DatabaseError as exc:  # a progress or record write failed (connection lost)
            text, sqlstate = describe(exc)
            raise failure(
                entry,
                self.prep,
                None,
                text,
                sqlstate,
                self.done,
                self.options,
                f"The connection failed after statement {ran} of {self.total} of this no-transaction "
                "file ran; sqlmigrate_status shows how far it got, and the next run resumes there.",
                fix=False,
            ) from None
        finally:
            with suppress(DatabaseError):
                ex.send(
                    "RESET lock_timeout; RESET statement_timeout;"
                    + (" RESET search_path;" if ex.recorder.schema else "")
                )

    def preview(self) -> list[str]:
        """Return the queries a run would send from the current state; only catalog reads are sent.

        A partly run file starts at its next statement, after what the resume would clean up or
        finish (an INVALID index dropped, a pending detach finalized, a finished statement counted).
        """
        ex, progress = self.ex, self.entry.progress
        start = progress.statements_done if progress is not None else 0
        settle: list[str] = []
        settled = start if progress is not None else -1  # its leftovers are in ``settle``
        if progress is not None and start < self.total:
            stmt = self.statements[start]
            found = self._inspect(stmt, self._since(stmt) if progress.in_flight else None)
            if found is not None:
                settle = [notx.terminated(x.fix) for x in found.leftovers]
                if found.done or any(x.finishes for x in found.leftovers):
                    hashes = notx.hashes(self.prep)[: start + 1]
                    row = ex.recorder.progress_sql(
                        self.entry.files, self.direction, self.prep.file.checksum, hashes, self.total
                    )
                    settle.append(f"BEGIN; {row}; COMMIT;")
                    start += 1
        out: list[str] = []
        for n, (query, k) in enumerate(
            ex.no_transaction_queries(self.direction, self.entry, self.prep, start)
        ):
            if k >= 0 and k != settled and _named_index(self.statements[k]):
                found = self._inspect(self.statements[k], None)  # an INVALID index of that name goes first
                out += [notx.terminated(x.fix) for x in found.leftovers] if found else []
            out.append(query)
            if n == 0:  # after the session settings, as a resume cleans up under the file's timeouts
                out += settle
        return out

    def _inspect(self, stmt: Statement, since: str | None) -> Found | None:
        with self.ex.connection.cursor() as cursor:
            return leftovers.inspect(cursor, stmt, since)

    def _statement(self, query: str, k: int) -> None:
        """Send statement k+1 (with its progress), retrying after lock timeouts; check what it left."""
        stmt, body = self.statements[k], self.prep.body
        text = body[stmt.start : stmt.end]
        self.ex.callback(
            "statement", entry=self.entry, index=k + 1, total=self.total, line=stmt.line, sql=text
        )
        since = self._since(stmt)
        cleaned: list[str] = []
        if _named_index(stmt):
            self._clean(stmt, k, None, cleaned)  # an INVALID index a failed earlier run left
        sent = time.perf_counter()
        try:
            self._send(query, text, stmt, lambda: self._clean(stmt, k, since, cleaned))
            self.ms += (time.perf_counter() - sent) * 1000
            problem = self._broken(stmt, since)
        except DatabaseError as exc:
            self.ex.rollback()
            settled = self._after_failure(stmt, k, since, cleaned, exc)
            if (
                settled is None
            ):  # finishing what the attempt left completed the statement: its progress follows
                self.ms += (time.perf_counter() - sent) * 1000
                return
            pos, line = position(exc), stmt.line
            if pos is not None:
                offset = pos - (0 if stmt.no_transaction else query.index(text))
                if 0 <= offset <= len(text):
                    line = line_of(body, stmt.start + offset)
            raise self._failed(k, line, exc, cleaned, settled=settled) from None
        if problem:
            raise self._unkept(k, problem, since)

    def _send(self, query: str, text: str, stmt: Statement, clean: Callable[[], Found | None]) -> None:
        ex = self.ex
        try:
            # Before a lock-timeout retry of a statement sent alone, remove what the attempt left (or
            # finish it: a pending detach): a retry must not build a second index or skip a broken one.
            finished = (lambda: bool((found := clean()) and found.done)) if stmt.no_transaction else None
            ex.execute_with_retries(self.entry, query, rollback=True, finished=finished)
        except DatabaseError as exc:
            if describe(exc)[1] != ACTIVE_SQL_TRANSACTION or stmt.no_transaction:
                raise
            # A statement nixmig did not know PostgreSQL refuses in a transaction block: send it alone,
            # then the rest of the query (its progress, or the record) in a transaction of its own.
            ex.execute_with_retries(self.entry, text, rollback=False)
            rest = query[query.index(text) + len(text) :].lstrip().removeprefix(";").strip()
            ex.send("BEGIN; " + rest)

    def _since(self, stmt: Statement) -> str | None:
        """The transaction id of the in-flight mark, for a statement whose leftovers only it tells apart."""
        effect = stmt.effect
        if effect is None or effect.kind != "index" or effect.name:
            return None
        return self.ex.recorder.flight_xid(self.entry.files, self.direction)

    def _clean(self, stmt: Statement, k: int, since: str | None, cleaned: list[str]) -> Found | None:
        """Remove (or finish) what an earlier attempt of statement k+1 left in the catalog; say so."""
        ex = self.ex
        found = self._inspect(stmt, since)
        for left in found.leftovers if found else ():
            ex.send(left.fix)
            cleaned.append(left.what)
            ex.callback(
                "cleaned",
                entry=self.entry,
                statement=k + 1,
                line=stmt.line,
                what=left.what,
                sql=left.fix,
                finishes=left.finishes,
            )
            if left.finishes:  # done, by what it sent: the leftover it finished is kept to say so
                return leftovers.Found(True, (left,))
        return found

    def _after_failure(
        self, stmt: Statement, k: int, since: str | None, cleaned: list[str], exc: DatabaseError
    ) -> bool | None:
        """Statement k+1 failed: remove or finish what it left. Return None when finishing it completed it.

        A DETACH PARTITION ... CONCURRENTLY that times out in its second transaction leaves the
        partition pending detach, and the only way on is FINALIZE, which completes the detach: the
        statement is then done and counts as done, never as a failure that left nothing. Otherwise
        return whether the catalog is settled (False: the clean-up failed too, the mark stays).
        """
        if not stmt.no_transaction:
            return True
        try:
            found = self._clean(stmt, k, since, cleaned)
        except DatabaseError:
            return False
        if found is None or not found.done or not any(x.finishes for x in found.leftovers):
            return True  # a statement whose goal was there already (DROP INDEX of no index) still failed
        self.ex.callback(
            "completed",
            entry=self.entry,
            statement=k + 1,
            line=stmt.line,
            what=stmt.no_transaction,
            reason=describe(exc)[0],
        )
        return None

    def _broken(self, stmt: Statement, since: str | None) -> str | None:
        """Why the catalog is not as statement ``stmt`` (just run, no error) promises; None when it is."""
        found = self._inspect(stmt, since) if stmt.no_transaction else None
        return found.problem if found is not None else None

    def _settle(self, k: int, in_flight: bool) -> int:
        """Before a resume at statement k+1: clean up or finish what its last attempt left; return where to start.

        A statement that can't share a transaction with its progress row may have finished (or half
        finished) before the row said so: its result is checked in the catalog, not assumed.
        """
        stmt = self.statements[k]
        found = self._clean(stmt, k, self._since(stmt) if in_flight else None, [])
        if found is None or not found.done:
            return k
        self.ex.callback(
            "already_done", entry=self.entry, statement=k + 1, line=stmt.line, what=stmt.no_transaction
        )
        self.ex.recorder.save_progress(
            self.entry.files,
            self.direction,
            self.prep.file.checksum,
            notx.hashes(self.prep)[: k + 1],
            self.total,
        )
        return k + 1

    def _failed(
        self,
        k: int,
        line: int | None,
        exc: DatabaseError,
        cleaned: list[str],
        *,
        settled: bool,
        sent: bool = True,
    ) -> MigrationFailed:
        """Statement k+1 (sent, or being settled before a resume) failed: keep what may have run, say why.

        ``settled``: what the failed attempt left was removed (a failed CREATE INDEX CONCURRENTLY
        leaves an INVALID index), so the progress can say exactly statements 1..k ran.
        """
        text, sqlstate = describe(exc)
        why = cause(exc, sqlstate)
        stmt = self.statements[k]
        settled = settled and self._save_failure(k, text)
        state = (
            "settled" if settled else "in flight" if stmt.no_transaction or not sent else "one transaction"
        )
        truth = notx_truth(
            self.direction,
            k,
            self.total,
            cause=why,
            state=state,
            cleaned=cleaned,
            attempts=self.ex.retries + 1,
            resuming=not sent,
        )
        fix = why is None and state == "settled"
        return failure(
            self.entry, self.prep, line, text, sqlstate, self.done, self.options, truth, fix=fix, cause=why
        )

    def _unkept(self, k: int, problem: str, since: str | None) -> MigrationFailed:
        """Statement k+1 ended without an error, but the catalog is not as it promises: a failure, never OK."""
        stmt = self.statements[k]
        cleaned: list[str] = []
        try:
            self._clean(stmt, k, since, cleaned)
            settled = self._save_failure(k, problem)
        except DatabaseError:
            settled = False
        truth = unkept_truth(self.direction, k, self.total, problem, cleaned, kept=not settled)
        return failure(self.entry, self.prep, stmt.line, problem, None, self.done, self.options, truth)

    def _save_failure(self, ran: int, error: str) -> bool:
        """After statement ran+1 failed and left nothing: keep exactly 1..ran as progress, with the error.

        Return False when the connection is gone: the row then still says what ran, with its mark.
        """
        sql = notx.failed_progress_sql(self.ex.recorder, self.entry, self.direction, self.prep, ran, error)
        try:
            self.ex.send(f"BEGIN; {sql}; COMMIT;")
            return True
        except DatabaseError:
            self.ex.rollback()
            return False


def _named_index(stmt: Statement) -> bool:
    """True for a named CREATE INDEX CONCURRENTLY: an INVALID index of its name is dropped before it runs."""
    return stmt.effect is not None and stmt.effect.kind == "index" and bool(stmt.effect.name)
