"""One runner at a time: a session-level advisory lock, taken by polling.

A runner that waits inside a blocking ``pg_advisory_lock()`` is a running statement
that ``CREATE INDEX CONCURRENTLY`` in the lock holder waits for: a deadlock
(golang-migrate 960, Flyway 1654). So nixmig polls ``pg_try_advisory_lock()`` with
backoff from a session that holds no transaction while it waits.

A runner killed with ``kill -9`` in the middle of a long statement leaves a backend
that would finish the statement, then run the rest of the query string -- the record
and the COMMIT -- behind the dead runner's back, and hold the lock all that time. The
lock's session therefore sets ``client_connection_check_interval`` (PostgreSQL 14+), so
the server notices a vanished client within a second, rolls back and frees the lock.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import DatabaseError

from . import conf
from .exceptions import LockTimeout, NixmigError
from .sqlnames import literal

if TYPE_CHECKING:
    from django.db.backends.postgresql.base import DatabaseWrapper

CLIENT_CHECK_INTERVAL = "1s"  # how soon the server notices that a killed runner is gone


class MigrationLock:
    """Context manager holding the migration lock of one database and tracking table."""

    def __init__(
        self,
        connection: DatabaseWrapper,
        table: str,
        *,
        wait: float | None = None,
        callback: Callable[..., None] | None = None,
        command: str = "nixmig",
    ):
        self.connection = connection
        self.table = table
        self.wait = float(conf.get("LOCK_WAIT") if wait is None else wait)
        self.callback = callback or (lambda event, **data: None)
        self.command = command
        self.key: int | None = None

    def application_name(self) -> str:
        name = f"{conf.get('APPLICATION_NAME')} {self.command} pid={os.getpid()} host={socket.gethostname()}"
        return name[:63]

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def holder(self) -> dict | None:
        """Return pid and application_name of the session holding the lock, if any."""
        assert self.key is not None, "holder() is asked while the lock is wanted"
        hi, lo = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        row = self._query(
            "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1",
            [hi, lo],
        )
        if row is None:
            return None
        return {"pid": row[0], "application_name": row[1], "client_addr": row[2], "since": row[3]}

    def __enter__(self) -> MigrationLock:
        if self.connection.in_atomic_block:
            raise NixmigError(
                "nixmig can't run inside transaction.atomic(): it runs each migration in its own "
                "transaction and takes a session lock. Call it outside the atomic block."
            )
        with self.connection.cursor() as cursor:
            cursor.execute("SET application_name = %s", [self.application_name()])
            if self.connection.pg_version >= 140000:
                cursor.execute(f"SET client_connection_check_interval = {literal(CLIENT_CHECK_INTERVAL)}")
            cursor.execute("SELECT hashtextextended(%s || current_database(), 0)", [f"nixmig:{self.table}:"])
            self.key = cursor.fetchone()[0]
        started = time.monotonic()
        delay = 0.05
        last_holder = None
        while True:
            if self._query("SELECT pg_try_advisory_lock(%s)", [self.key])[0]:
                if last_holder is not None:
                    self.callback("lock_acquired", waited=time.monotonic() - started)
                return self
            waited = time.monotonic() - started
            holder = self.holder() or {"pid": None, "application_name": "(released just now)"}
            if last_holder is None or holder["pid"] != last_holder["pid"]:
                self.callback("lock_wait", holder=holder, waited=waited, limit=self.wait)
            last_holder = holder
            if waited >= self.wait:
                raise LockTimeout(
                    f"Gave up after waiting {waited:.0f} s for the migration lock, held by pid {holder['pid']} "
                    f"({holder['application_name'] or 'no application_name'}). Another runner is still migrating "
                    "this database: wait for it, raise --lock-wait, or if that session is stuck end it with "
                    f"SELECT pg_terminate_backend({holder['pid']});"
                )
            time.sleep(min(delay * (0.8 + 0.4 * random.random()), max(self.wait - waited, 0.01)))
            delay = min(delay * 1.6, 1.0)

    def __exit__(self, *exc_info: object) -> None:
        if self.key is None:
            return
        try:
            raw = self.connection.connection
            if raw is not None and raw.info.transaction_status != 0 and not self.connection.in_atomic_block:
                # Interrupted mid-migration (Ctrl-C): end the aborted transaction, or the unlock fails
                # and a long-lived process (startup apply) would keep the lock.
                raw.rollback()
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
                cursor.execute("RESET application_name")
                if self.connection.pg_version >= 140000:
                    cursor.execute("RESET client_connection_check_interval")
        except (DatabaseError, psycopg.Error):
            pass  # a broken connection has released the lock already
