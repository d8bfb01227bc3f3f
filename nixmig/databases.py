"""Which databases nixmig works on, and running one job on several of them.

Each database has its own tracking table rows and its own migration lock, so runs on
different databases are independent and may go concurrently (one thread and one
connection per database). Database routers decide, through ``allow_migrate`` for the
app label ``nixmig``, which databases take SQL migrations at all.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from django.db import DEFAULT_DB_ALIAS, connections, router

from .exceptions import NixmigError

APP_LABEL = "nixmig"


@dataclass(frozen=True)
class Selection:
    """The databases to work on, and those left out with the reason."""

    aliases: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    """What a job did on one database: its result, or the error that stopped it."""

    database: str
    result: Any = None
    error: NixmigError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def allows(alias: str) -> bool:
    """Return True if the database routers let nixmig migrate ``alias``."""
    return bool(router.allow_migrate(alias, APP_LABEL, model_name="migrationrecord"))


def is_postgresql(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


def require_known(aliases: Iterable[str]) -> None:
    """Raise a clear error naming the aliases that settings.DATABASES doesn't have."""
    unknown = [a for a in aliases if a not in connections.settings]
    if unknown:
        raise NixmigError(f"There is no database {', '.join(map(repr, unknown))} in settings.DATABASES "
                          f"(known: {', '.join(connections)}).")


def select(aliases: Iterable[str] | str | None = None, *, all_databases: bool = False) -> Selection:
    """Return the databases to work on: ``aliases`` (default 'default') or every configured one.

    Unknown aliases raise; databases that routers exclude (and, with ``all_databases``,
    databases that are not PostgreSQL) are left out with the reason.
    """
    if isinstance(aliases, str):
        aliases = [aliases]
    wanted = list(connections) if all_databases else list(dict.fromkeys(aliases or [DEFAULT_DB_ALIAS]))
    require_known(wanted)
    chosen, skipped = [], []
    for alias in wanted:
        if all_databases and not is_postgresql(alias):
            skipped.append((alias, f"it is {connections[alias].vendor}, not PostgreSQL"))
        elif not allows(alias):
            skipped.append((alias, "the database routers don't allow migrating the nixmig app there "
                                   "(allow_migrate)"))
        else:
            chosen.append(alias)
    return Selection(tuple(chosen), tuple(skipped))


def _one(job: Callable[[str], Any], alias: str, close: bool) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome(alias)
    try:
        outcome.result = job(alias)
    except NixmigError as exc:
        outcome.error = exc
    finally:
        outcome.seconds = time.perf_counter() - started
        if close:  # a worker thread's connection would otherwise stay open until the process ends
            connections[alias].close()
    return outcome


def run_each(aliases: Iterable[str], job: Callable[[str], Any], *, parallel: int = 1,
             on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``job(alias)`` for every database, ``parallel`` at a time; return outcomes in the given order.

    A NixmigError stops only its own database. ``on_done`` is called as each database
    finishes (from the calling thread), so a report can be written as results come in.
    """
    aliases = list(aliases)
    done = on_done or (lambda outcome: None)
    if parallel <= 1 or len(aliases) <= 1:
        outcomes = []
        for alias in aliases:
            outcomes.append(_one(job, alias, close=False))
            done(outcomes[-1])
        return outcomes
    with ThreadPoolExecutor(max_workers=min(parallel, len(aliases)), thread_name_prefix="nixmig") as pool:
        futures = {pool.submit(_one, job, alias, True): alias for alias in aliases}
        by_alias = {}
        for future in as_completed(futures):
            outcome = future.result()
            by_alias[outcome.database] = outcome
            done(outcome)
    return [by_alias[a] for a in aliases]
