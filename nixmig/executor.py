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
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction

from . import conf, notx, sqlnames
from .exceptions import MigrationFailed, NixmigError
from .notx import resume_problem
from .notxrun import NoTransactionRun
from .pgerrors import (
    LOCK_NOT_AVAILABLE,
    cause,
    connection_lost,
    describe,
    locate,
    position,
    replayable,
)
from .plan import Entry, RunOptions
from .recorder import Recorder
from .reports import failure
from .sqlnames import literal
from .tree import Directives, line_of

if TYPE_CHECKING:  # pglast costs ~30 ms to import; sqlmigrate_status never needs it
    from django.db.backends.postgresql.base import DatabaseWrapper

    from .sqltext import Prepared


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
        prefix = ("" if in_tx else "BEGIN; ") + self.settings(directives, True) + "\n"
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
        the progress rows of a no-transaction file included, and a partly run file resumed
        where a real run would resume it.
        """
        out = []
        progress_table = False
        for entry in entries:
            prep = None if fake else prepared.get(entry.id)
            if prep is not None and prep.no_transaction:
                queries = [] if progress_table else [self.recorder.progress_table_sql() + ";"]
                progress_table = True
                queries += NoTransactionRun(self, entry, prep, RunOptions(direction), []).preview()
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
        ms: float | None = None  # a no-transaction file: the sum of its statements' times, as recorded
        try:
            if prep is not None and prep.no_transaction and not options.fake:
                ms = self._no_transaction(entry, prep, options, done)
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
            ms=(time.perf_counter() - started) * 1000 if ms is None else ms,
        )

    def settings(self, directives: Directives, local: bool) -> str:
        scope = "SET LOCAL" if local else "SET"
        path = f"{scope} search_path = {self.search_path()}; " if self.recorder.schema else ""
        return (
            f"{path}{scope} lock_timeout = {literal(directives.lock_timeout or self.lock_timeout)}; "
            f"{scope} statement_timeout = {literal(directives.statement_timeout or self.statement_timeout)};"
        )

    def search_path(self) -> str:
        """The search_path of a schema target: its schema, then public (for shared objects)."""
        assert self.recorder.schema is not None, "only a schema target has a search_path of its own"
        return sqlnames.search_path(self.recorder.schema)

    def execute_with_retries(
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
                    self.rollback()
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
            self.execute_with_retries(entry, query, rollback=not in_tx)
        except DatabaseError as exc:
            text, sqlstate = describe(exc)
            line = None
            pos = position(exc)
            if pos is not None and prep is not None:
                offset = pos - len(prefix)
                if 0 <= offset <= len(prep.body):
                    line = line_of(prep.body, offset)
            if line is None and prep is not None and not in_tx and replayable(sqlstate):
                line = locate(self.connection, prep, "BEGIN; " + self.settings(prep.file.directives, True))
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

    def no_transaction_queries(
        self, direction: str, entry: Entry, prep: Prepared, start: int = 0
    ) -> list[tuple[str, int]]:
        finish = self.finish_sql(direction, entry)
        if entry.progress is None:  # this run writes progress rows; the record's transaction clears them
            finish += "; " + self.recorder.clear_progress_sql(entry.files)
        return notx.queries(
            self.recorder, self.settings(prep.file.directives, False), finish, direction, entry, prep, start
        )

    def _no_transaction(self, entry: Entry, prep: Prepared, options: RunOptions, done: list[Entry]) -> float:
        """Run a no-transaction file; return the sum of its statements' times (in ms)."""
        run = NoTransactionRun(self, entry, prep, options, done)
        run.run()
        return run.ms

    def send(self, query: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(query)

    def rollback(self) -> None:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except DatabaseError:
            pass
