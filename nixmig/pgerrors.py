"""What a PostgreSQL error says, read from psycopg's diagnostics behind Django's DatabaseError."""

from __future__ import annotations

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"  # statement_timeout, or a cancel request
ACTIVE_SQL_TRANSACTION = "25001"  # "... cannot run inside a transaction block"


def pg_error(exc: BaseException):
    """Return the psycopg error behind a Django DatabaseError."""
    return exc.__cause__ if getattr(exc.__cause__, "diag", None) is not None else exc


def describe(exc: BaseException) -> tuple[str, str | None]:
    err = pg_error(exc)
    diag = getattr(err, "diag", None)
    sqlstate = getattr(err, "sqlstate", None)
    message = diag.message_primary if diag and diag.message_primary else str(err).strip().splitlines()[0]
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


def replayable(sqlstate: str | None) -> bool:
    """True when replaying the failed SQL would fail the same way (not a timeout, lock, deadlock or lost connection)."""
    return (
        sqlstate is not None
        and sqlstate != ""
        and sqlstate[:2] not in ("08", "40", "53", "55", "57", "58", "XX")
    )


def position(exc: BaseException) -> int | None:
    diag = getattr(pg_error(exc), "diag", None)
    pos = diag.statement_position if diag is not None else None
    return int(pos) - 1 if pos else None


def connection_lost(exc: BaseException, sqlstate: str | None) -> bool:
    """True when the error is the end of the connection (terminated, server restart, network), not of the SQL."""
    from django.db import OperationalError

    return (
        (sqlstate or "")[:2] == "08"
        or sqlstate in ("57P01", "57P02", "57P03")
        or (sqlstate is None and isinstance(exc, OperationalError))
    )


def cause(exc: BaseException, sqlstate: str | None) -> str | None:
    """Name why a statement stopped when it was not its SQL: 'lock timeout', 'terminated', 'lost', 'cancelled'."""
    if sqlstate == LOCK_NOT_AVAILABLE:
        return "lock timeout"
    if sqlstate in ("57P01", "57P02", "57P03"):
        return "terminated"
    if connection_lost(exc, sqlstate):
        return "lost"
    if sqlstate == QUERY_CANCELED:
        return "cancelled"
    return None


def locate(connection, prep, begin: str) -> int | None:
    """Return the line of the failing statement of a file by replaying it one statement at a time.

    PostgreSQL gives no error position for errors such as a DROP that other objects depend
    on. The replay runs in a transaction (``begin``) that is always rolled back, so it changes nothing.
    """
    from django.db import DatabaseError

    from .tree import line_of

    statements = [s for s in prep.analysis.statements if not s.transaction_control]
    if len(statements) <= 1:
        return statements[0].line if statements else None
    try:
        with connection.cursor() as cursor:
            cursor.execute(begin)
            try:
                for s in statements:
                    try:
                        cursor.execute(prep.body[s.start : s.end])
                    except DatabaseError as exc:
                        pos = position(exc)
                        return line_of(prep.body, s.start + pos) if pos is not None else s.line
            finally:
                cursor.execute("ROLLBACK")
    except DatabaseError:
        return None
    return None
