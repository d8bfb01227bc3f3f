"""Which databases nixmig works on.

Each database has its own tracking table rows and its own migration lock, so runs on
different databases are independent and may go concurrently (``nixmig.rollout`` runs
one job on many targets). Database routers decide, through ``allow_migrate`` for the
app label ``nixmig``, which databases take SQL migrations at all.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router

from .exceptions import NixmigError

APP_LABEL = "nixmig"


@dataclass(frozen=True)
class Selection:
    """The databases to work on, and those left out with the reason."""

    aliases: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def allows(alias: str) -> bool:
    """Return True if the database routers let nixmig migrate ``alias``."""
    return bool(router.allow_migrate(alias, APP_LABEL, model_name="migrationrecord"))


def is_postgresql(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


def require_known(aliases: Iterable[str]) -> None:
    """Raise a clear error naming the aliases that settings.DATABASES doesn't have."""
    unknown = [a for a in aliases if a not in connections.settings]
    if unknown:
        raise NixmigError(
            f"There is no database {', '.join(map(repr, unknown))} in settings.DATABASES "
            f"(known: {', '.join(connections)})."
        )


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
            skipped.append(
                (alias, "the database routers don't allow migrating the nixmig app there (allow_migrate)")
            )
        else:
            chosen.append(alias)
    return Selection(tuple(chosen), tuple(skipped))


# -- temporary aliases (URL targets, verify's scratch database, test helpers) ----------------------

_DEFAULTS = {
    "ATOMIC_REQUESTS": False,
    "AUTOCOMMIT": True,
    "CONN_MAX_AGE": 0,
    "CONN_HEALTH_CHECKS": False,
    "OPTIONS": {},
    "TIME_ZONE": None,
    "TEST": {},
    "USER": "",
    "PASSWORD": "",
    "HOST": "",
    "PORT": "",
}


def complete(settings: Mapping[str, Any]) -> dict:
    """Fill in the keys Django expects of a DATABASES entry that dj-database-url leaves out."""
    return {**_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}


def register(alias: str, settings: dict) -> str:
    """Add a temporary alias to django.db.connections (unless it is there already); return it."""
    if alias not in connections.settings:
        connections.settings[alias] = settings
    return alias


def forget(alias: str) -> None:
    """Close this thread's connection of a temporary alias, and unregister the alias."""
    if alias in connections.settings:
        connections[alias].close()
        with contextlib.suppress(AttributeError):  # no connection was made in this thread
            del connections[alias]
        del connections.settings[alias]


# -- database URLs: parsed by dj-database-url, shown without their password ------------------------

_PASSWORD_PARAM = re.compile(r"([?&])password=[^&#]*&?", re.IGNORECASE)
_url_aliases: dict[str, str] = {}  # URL (with its password, in memory only) -> its temporary alias
_alias_numbers = itertools.count(1)
_alias_lock = threading.Lock()


def without_password(url: str) -> str:
    """Return ``url`` with any password removed, for output and reports.

    Also when the URL is malformed: everything between '://' and the last '@' is user
    information, and only its user name (before the first ':') is kept, so a password with an
    unescaped '/', '@' or '#' never shows. A ``password=`` query parameter is dropped too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _PASSWORD_PARAM.sub(r"\1", url).rstrip("?&")
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        rest = f"{user}@{rest}" if user else rest
    shown = f"{scheme}://{rest}"
    return _PASSWORD_PARAM.sub(r"\1", shown).rstrip("?&") if "password=" in shown.lower() else shown


def parse_url(url: str, where: str) -> dict:
    """Return the DATABASES entry of a PostgreSQL URL, or raise a NixmigError that shows no password."""
    import dj_database_url

    try:
        settings = dj_database_url.parse(url)
    except ValueError:
        raise NixmigError(
            f"{where}: can't read the database URL {without_password(url)!r}; write it as "
            "postgres://user:password@host:port/name, with any '/', '@', ':', '#' or '%' in the user "
            "name or password percent-encoded (e.g. '/' as %2F)."
        ) from None
    if not settings.get("NAME"):
        raise NixmigError(
            f"{where}: the database URL {without_password(url)!r} names no database; end it with "
            "/<database name>."
        )
    return complete(settings)


def register_url(url: str, where: str, prefix: str = "nixmig_target") -> str:
    """Register a temporary alias for a database URL; return it (the same URL gets the same alias).

    The alias is numbered, never derived from the URL: it shows in errors and reports, and a
    hash of a URL with its password would let a weak password be found offline.
    """
    settings = parse_url(url, where)
    with _alias_lock:
        alias = _url_aliases.get(url)
        if alias is None or alias not in connections.settings:
            alias = f"{prefix}_{next(_alias_numbers)}"
            _url_aliases[url] = alias
        return register(alias, settings)
