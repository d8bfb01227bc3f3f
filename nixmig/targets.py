"""Targets of a rollout: databases, database URLs and (database, schema) pairs.

A target is a Django database alias, a database URL (registered as a temporary alias for
the rollout), or either of them with a schema (schema-per-tenant). Sources, combined in
this order and without duplicates: ``--database`` (repeatable) or ``--all-databases``;
``--schema NAME`` and ``--schemas-from SQL`` (a query run on each of those databases),
which turn each database into one target per schema; ``--targets-file FILE``; and, when
none of these is given, ``NIXMIG['TARGETS']``, a callable (or its dotted path) returning
targets.

A targets file has one target per line: ``alias``, ``alias:schema``, ``URL`` or
``URL schema``, optionally followed by ``[canary]`` and ``[queue=NAME]`` (the Celery queue
whose workers can reach it, for ``--executor celery``); blank lines and ``#`` comments are
ignored. Parsing a file needs no database (``parse_targets``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connections

from . import conf, databases, sqlnames
from .databases import without_password
from .exceptions import NixmigError, UnsafeName

CANARY = "[canary]"
QUEUE_RE = re.compile(r"\[queue=([A-Za-z0-9_.:@-]{1,200})\]\Z", re.IGNORECASE)
URL_SCHEMES = ("postgres://", "postgresql://", "pgsql://")


class TargetError(NixmigError):
    """A target can't be read or reached; nothing was run."""


@dataclass(frozen=True)
class Target:
    """One database (alias), or one schema of it, to run on."""

    alias: str
    schema: str | None = None
    url: str | None = None  # a URL target's URL, without its password
    canary: bool = False
    queue: str | None = None  # the Celery queue whose workers take it (--executor celery)

    @property
    def key(self) -> str:
        """Return the target as a targets-file line says it (the name used in reports)."""
        if self.url:
            return f"{self.url} {self.schema}" if self.schema else self.url
        return f"{self.alias}:{self.schema}" if self.schema else self.alias

    @property
    def kind(self) -> str:
        return "schema" if self.schema else "database"


@dataclass(frozen=True)
class TargetSpec:
    """One line of a targets file, parsed (no database touched)."""

    database: str  # an alias or a URL
    schema: str | None
    canary: bool
    line: int
    queue: str | None = None

    @property
    def is_url(self) -> bool:
        return "://" in self.database


@dataclass
class Selection:
    """The targets to work on, those left out with the reason, and the temporary aliases of URL targets."""

    targets: list[Target]
    skipped: list[tuple[str, str]]
    temporary: list[str]

    def close(self) -> None:
        """Close and unregister the temporary aliases of URL targets."""
        for alias in self.temporary:
            databases.forget(alias)
        self.temporary = []


def check_schema_name(name: str, where: str) -> str:
    """Return ``name`` if it can be the schema of a target (see ``sqlnames.schema_problem``), else raise."""
    try:
        return sqlnames.check_schema(name, where)
    except UnsafeName as exc:
        raise TargetError(str(exc)) from None


def _shown(line: str) -> str:
    """Return a targets-file line as an error may show it: any URL in it without its password."""
    return " ".join(without_password(field) for field in line.split())


def parse_targets(text: str, source: str = "the targets file") -> list[TargetSpec]:
    """Parse the lines of a targets file; raise a TargetError naming the file and line of a bad one."""
    specs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        where = f"{source} line {number}"
        fields = line.split()
        canary, queue = False, None
        while fields and fields[-1].startswith("["):
            mark = QUEUE_RE.match(fields[-1])
            if fields[-1].lower() == CANARY and not canary:
                canary = True
            elif mark and queue is None:
                queue = mark.group(1)
            else:
                break
            fields = fields[:-1]
        if not fields or len(fields) > 2 or any(f.startswith("[") for f in fields):
            raise TargetError(
                f"{where}: {_shown(raw)!r} is not a target. Write one per line: 'alias', "
                "'alias:schema', 'URL' or 'URL schema', optionally followed by '[canary]' and "
                "'[queue=NAME]' (letters, digits and . _ - : @)."
            )
        database, schema = fields[0], fields[1] if len(fields) == 2 else None
        if "://" in database:
            if not database.startswith(URL_SCHEMES):
                raise TargetError(
                    f"{where}: {database.split('://')[0]!r} URLs are not PostgreSQL; nixmig works "
                    "with postgres:// (or postgresql://) URLs only."
                )
        else:
            if schema is not None:
                raise TargetError(
                    f"{where}: write a schema of a database alias as 'alias:schema' "
                    f"({database}:{schema}), not separated by a space."
                )
            database, _, schema = database.partition(":")
            schema = schema or None
            if not database:
                raise TargetError(f"{where}: {_shown(raw)!r} names no database alias before the ':'.")
        if schema is not None:
            schema = check_schema_name(schema, where)
        specs.append(TargetSpec(database, schema, canary, number, queue))
    return specs


def register_url(url: str, where: str) -> str:
    """Register a temporary Django alias for a database URL; return the alias."""
    try:
        return databases.register_url(url, where)
    except NixmigError as exc:
        raise TargetError(str(exc)) from None


def _from_specs(specs: Iterable[TargetSpec], source: str, temporary: list[str]) -> list[Target]:
    out = []
    for spec in specs:
        where = f"{source} line {spec.line}" if spec.line else source
        if spec.is_url:
            alias = register_url(spec.database, where)
            if alias not in temporary:
                temporary.append(alias)
            out.append(Target(alias, spec.schema, without_password(spec.database), spec.canary, spec.queue))
        else:
            if spec.database not in connections.settings:
                raise TargetError(
                    f"{where}: there is no database {spec.database!r} in settings.DATABASES (known: "
                    f"{', '.join(connections)}). Use an alias of settings.DATABASES or a database URL."
                )
            out.append(Target(spec.database, spec.schema, None, spec.canary, spec.queue))
    return out


def schemas_from(alias: str, query: str) -> list[str]:
    """Return the schema names that ``query`` returns on database ``alias`` (its first column)."""
    from . import api

    was_open = connections[alias].connection is not None
    connection = api.connection_for(alias)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            if cursor.description is None:
                raise TargetError(
                    f"--schemas-from: the query returned no rows on database {alias!r}; it must be a "
                    "SELECT of one column of schema names, e.g. 'SELECT schema_name FROM tenants'."
                )
            rows = cursor.fetchall()
        if not was_open and not connection.in_atomic_block:
            connection.close()  # the rollout's workers hold at most --parallel connections; this one is done
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(
            f"--schemas-from: the query failed on database {alias!r} ({first}); nothing was run. It "
            "must be a SELECT of one column of schema names, e.g. 'SELECT schema_name FROM tenants'."
        ) from None
    names = []
    for row in rows:
        if row[0] is None:
            continue
        names.append(check_schema_name(str(row[0]), f"--schemas-from on database {alias!r}"))
    return names


def _from_setting(temporary: list[str]) -> list[Target]:
    value = conf.get("TARGETS")
    func: Callable[[], Any]
    if isinstance(value, str):
        from django.utils.module_loading import import_string

        try:
            func = import_string(value)
        except ImportError as exc:
            raise TargetError(
                f"NIXMIG['TARGETS'] = {value!r} can't be imported ({exc}); name a callable that "
                "returns targets, e.g. 'myproject.tenants.nixmig_targets'."
            ) from None
    else:
        func = value
    if not callable(func):
        raise TargetError(
            f"NIXMIG['TARGETS'] = {value!r} is not callable; name a callable that returns targets."
        )
    specs: list[TargetSpec] = []
    out: list[Target] = []
    for item in func() or ():
        if isinstance(item, Target):
            out.append(item)
        elif isinstance(item, str):
            specs.extend(parse_targets(item, "NIXMIG['TARGETS']"))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            alias, schema = item
            specs.append(
                TargetSpec(
                    str(alias), check_schema_name(schema, "NIXMIG['TARGETS']") if schema else None, False, 0
                )
            )
        else:
            raise TargetError(
                f"NIXMIG['TARGETS'] returned {item!r}; return Target objects, (alias, schema) pairs "
                "or strings as in a targets file ('alias', 'alias:schema', 'URL', 'URL schema')."
            )
    return out + _from_specs(specs, "NIXMIG['TARGETS']", temporary)


def select(
    *,
    database: Iterable[str] | str | None = None,
    all_databases: bool = False,
    schemas: Iterable[str] = (),
    schemas_query: str | None = None,
    targets_file: str | Path | None = None,
    use_setting: bool = True,
) -> Selection:
    """Return the targets the options name (see the module's docstring), in order, without duplicates."""
    temporary: list[str] = []
    try:
        return _select(
            database, all_databases, list(schemas or ()), schemas_query, targets_file, use_setting, temporary
        )
    except BaseException:
        for alias in temporary:
            databases.forget(alias)
        raise


def _select(
    database, all_databases, schemas, schemas_query, targets_file, use_setting, temporary
) -> Selection:
    if isinstance(database, str):
        database = [database]
    database = list(database or ())
    named = bool(database or all_databases or schemas or schemas_query or targets_file)
    out: list[Target] = []
    skipped: list[tuple[str, str]] = []
    if not named and use_setting and conf.get("TARGETS"):
        out = _from_setting(temporary)
    elif database or all_databases or schemas or schemas_query or not targets_file:
        chosen = databases.select(database or None, all_databases=all_databases)
        skipped.extend(chosen.skipped)
        names = [check_schema_name(s, "--schema") for s in schemas]
        for alias in chosen.aliases:
            per_db = names + (schemas_from(alias, schemas_query) if schemas_query else [])
            if schemas or schemas_query:
                out.extend(Target(alias, s) for s in dict.fromkeys(per_db))
            else:
                out.append(Target(alias))
    if targets_file:
        path = Path(targets_file)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise TargetError(
                f"Can't read the targets file {path} ({exc}); give a text file with one target per line."
            ) from None
        out.extend(_from_specs(parse_targets(text, str(path)), str(path), temporary))
    seen: dict[str, Target] = {}
    for target in out:
        if target.key in seen:
            if target.canary and not seen[target.key].canary:
                seen[target.key] = replace(seen[target.key], canary=True)
            continue
        seen[target.key] = target
    return Selection(list(seen.values()), skipped, temporary)


def from_keys(keys: Iterable[str], source: str) -> Selection:
    """Return the targets named by report keys (the targets-file syntax), e.g. for --only-failed.

    Database aliases only: a report keeps a URL without its password, so a URL key is refused
    rather than connected to without the credentials the first run had.
    """
    urls = [k for k in keys if "://" in k]
    if urls:
        raise TargetError(
            f"{source} names database URL targets ({', '.join(urls[:3])}{', ...' if len(urls) > 3 else ''}), "
            "and a report keeps no passwords; nothing was run. Give --only-failed the target options "
            "of the first run too (e.g. the same --targets-file), so the credentials come from there."
        )
    temporary: list[str] = []
    try:
        specs = parse_targets("\n".join(keys), source)
        return Selection(_from_specs([replace(s, line=0) for s in specs], source, temporary), [], temporary)
    except BaseException:
        for alias in temporary:
            databases.forget(alias)
        raise
