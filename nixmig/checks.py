"""System checks: warn when a database is behind its SQL migrations, the way Django warns about its own.

They run with ``manage.py check --database default`` (database checks need ``--database``), and
``runserver`` prints the same warnings for ``default`` whatever the order of INSTALLED_APPS. A
database that can't be reached is a warning with the connection error, never a failure.
"""

from __future__ import annotations

import sys

from django.core.checks import Warning
from django.db import DEFAULT_DB_ALIAS, DatabaseError

from . import api, conf, databases
from .exceptions import DatabaseUnavailable, NixmigError, TreeError
from .plan import Status

SHOWN_IDS = 5


def run_hint(alias: str) -> str:
    flag = "" if alias == DEFAULT_DB_ALIAS else f" --database {alias}"
    return f"Run 'python manage.py sqlmigrate_up{flag}'."


def pending_message(status: Status, alias: str) -> str | None:
    """Return 'You have N unapplied SQL migration(s) ...' for ``alias``, or None when nothing is pending."""
    pending = status.pending
    if not pending:
        return None
    ids = ", ".join(e.id for e in pending[:SHOWN_IDS]) + (", ..." if len(pending) > SHOWN_IDS else "")
    where = "" if alias == DEFAULT_DB_ALIAS else f" in database {alias!r}"
    return (
        f"You have {len(pending)} unapplied SQL migration(s){where}: {ids}. Your project may not work "
        "properly until you apply them."
    )


def problems_message(status: Status, alias: str) -> str | None:
    """Return one line naming what sqlmigrate_status reports as wrong, or None."""
    counts = status.counts()
    parts = [
        f"{counts[state]} {state.replace('_', ' ')}"
        for state in ("changed", "missing", "partly_applied", "partly_rolled_back")
        if counts[state]
    ]
    problems = [p for p in status.problems if p.level in ("error", "warning") and p.code not in counts]
    if problems:
        parts.append(f"{len(problems)} problem(s) such as: {problems[0].message}")
    if not parts:
        return None
    where = "" if alias == DEFAULT_DB_ALIAS else f" of database {alias!r}"
    return f"The SQL migrations{where} are not in order: {'; '.join(parts)}"


def read_status(alias: str) -> Status | None:
    """Return the status of ``alias`` without creating anything; None for a database nixmig leaves alone."""
    if not databases.is_postgresql(alias) or not databases.allows(alias):
        return None
    try:
        return api.status(database=alias, create_table=False)
    except DatabaseError as exc:  # a safety net: the API turns these into NixmigErrors already
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnavailable(f"The database failed: {first}.") from None


def serving() -> bool:
    """Return True in a development server's process: ``runserver``, or another app's command of that
    family (django-extensions' ``runserver_plus``, ...), which runs the system checks without databases."""
    return len(sys.argv) > 1 and sys.argv[1].startswith("runserver")


def check_pending_at_runserver(app_configs=None, databases=None, **kwargs) -> list:
    """Give runserver the warnings of ``check --database default``, whichever app's runserver runs.

    Django runs the ``runserver`` of the first app in INSTALLED_APPS that has one
    (``django.contrib.staticfiles``'s, usually), and its system checks without databases; this check
    is the one hook every runserver shares, so where ``nixmig`` is listed does not matter.
    """
    if databases is not None or not serving():
        return []
    return check_sql_migrations(databases=[DEFAULT_DB_ALIAS])


def check_sql_migrations(app_configs=None, databases=None, **kwargs) -> list:
    """Warn about pending SQL migrations (nixmig.W001), status problems (W002, W003), an unreachable database (W004)."""
    if databases is None:
        return []
    messages = []
    for alias in databases:
        try:
            status = read_status(alias)
        except DatabaseUnavailable as exc:
            flag = "" if alias == DEFAULT_DB_ALIAS else f" --database {alias}"
            messages.append(
                Warning(
                    f"The SQL migrations of database {alias!r} could not be checked: {exc}",
                    hint=f"Run 'python manage.py sqlmigrate_status{flag}' once the database answers.",
                    id="nixmig.W004",
                )
            )
            continue
        except TreeError as exc:
            messages.append(
                Warning(
                    str(exc),
                    hint="Set NIXMIG['MIGRATIONS_DIR'] or fix the files named above.",
                    id="nixmig.W003",
                )
            )
            break  # every database reads the same tree
        except NixmigError as exc:
            messages.append(Warning(f"Database {alias!r}: {exc}", id="nixmig.W002"))
            continue
        if status is None:
            continue
        pending = pending_message(status, alias)
        if pending:
            hint = run_hint(alias)
            if conf.get("APPLY_ON_STARTUP"):
                hint += " NIXMIG['APPLY_ON_STARTUP'] is on, so the application applies them when it starts."
            messages.append(Warning(pending, hint=hint, id="nixmig.W001"))
        problems = problems_message(status, alias)
        if problems:
            flag = "" if alias == DEFAULT_DB_ALIAS else f" --database {alias}"
            messages.append(
                Warning(
                    problems,
                    hint=f"Run 'python manage.py sqlmigrate_status{flag}' for details.",
                    id="nixmig.W002",
                )
            )
    return messages
