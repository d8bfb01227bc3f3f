"""What PostgreSQL leaves in the catalog when a statement it runs outside a transaction fails or stops.

``CREATE INDEX CONCURRENTLY`` leaves an INVALID index (an unnamed one gets a new generated name on
every attempt), ``REINDEX ... CONCURRENTLY`` an INVALID ``<name>_ccnew`` or ``_ccold`` index, ``DROP
INDEX CONCURRENTLY`` an INVALID index, ``DETACH PARTITION ... CONCURRENTLY`` a partition pending
detach. This module reads that state in the catalog, says whether a statement's result is there,
and gives the SQL that removes (or finishes) what an earlier attempt left. It sends nothing itself
but catalog queries; the executor sends the fixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sqlnames import ident

if TYPE_CHECKING:  # status reads leftovers and never imports the parser
    from django.db.backends.utils import CursorWrapper

    from .sqltext import Effect, Statement

_INDEX = (
    "SELECT n.nspname::text, c.relname::text, i.indisvalid FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
)
# The key columns of an index, in order; "" for an expression.
_KEYS = (
    "ARRAY(SELECT coalesce(a.attname::text, '') FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, o) "
    "LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num "
    "WHERE k.o <= i.indnkeyatts ORDER BY k.o)"
)
_CC = r"_cc(new|old)[0-9]*$"


@dataclass(frozen=True)
class Leftover:
    what: str  # e.g. 'the INVALID index public.big_a_idx'
    fix: str  # the SQL that removes it (or, with ``finishes``, completes the statement)
    finishes: bool = False


@dataclass(frozen=True)
class Found:
    done: bool  # the statement's result is in the catalog
    leftovers: tuple[Leftover, ...] = ()
    problem: str | None = None  # why the catalog is not as the statement promises (None: it is)


def _name(parts: Iterable[str]) -> str:
    return ident(*parts)


def _drop(schema: str, name: str) -> Leftover:
    return Leftover(
        f"the INVALID index {schema}.{name}",
        f"DROP INDEX CONCURRENTLY IF EXISTS {ident(schema, name)}",
    )


def inspect(cursor: CursorWrapper, stmt: Statement, since: str | None = None) -> Found | None:
    """Return what the catalog holds of ``stmt``'s result and leftovers; None when nixmig can't tell.

    ``since`` is the transaction id of the progress row that marked the statement in flight: an
    unnamed index counts as this statement's only when created after it.
    """
    effect = stmt.effect
    if effect is None:
        if stmt.drops_indexes:
            cursor.execute(
                "SELECT bool_and(to_regclass(n) IS NULL) FROM unnest(%s::text[]) AS n",
                [list(stmt.drops_indexes)],
            )
            done = bool(cursor.fetchone()[0])
            return Found(done, problem=None if done else f"{', '.join(stmt.drops_indexes)} still exists")
        return None
    if effect.kind == "index":
        return _index(cursor, effect, since)
    if effect.kind == "reindex":
        left = _reindex_leftovers(cursor, effect)
        return Found(False, left, f"it left {', '.join(x.what for x in left)}" if left else None)
    if effect.kind == "detach":
        return _detach(cursor, effect)
    return None


def _index(cursor: CursorWrapper, effect: Effect, since: str | None) -> Found | None:
    table = _name(effect.relation)
    if effect.name:
        cursor.execute(
            _INDEX + "WHERE i.indrelid = to_regclass(%s) AND c.relname = %s", [table, effect.name[0]]
        )
        rows = cursor.fetchall()
        what = f"the index {effect.name[0]} on {'.'.join(effect.relation)}"
    else:
        if since is None:
            return None  # without the in-flight mark an unnamed index can't be told from older ones
        cursor.execute(
            _INDEX + f"WHERE i.indrelid = to_regclass(%s) AND age(c.xmin) < age(%s::text::xid) "
            f"AND i.indisunique = %s AND {_KEYS} = %s::text[] ORDER BY c.oid",
            [table, since, effect.unique, list(effect.columns)],
        )
        rows = cursor.fetchall()
        cols = ", ".join(c or "(expression)" for c in effect.columns)
        what = f"an index on {'.'.join(effect.relation)} ({cols}) built by this statement"
    valid = [r for r in rows if r[2]]
    left = tuple(_drop(r[0], r[1]) for r in rows if not r[2])
    if valid and not left:
        return Found(True)
    if valid:
        return Found(True, left, f"it also left {', '.join(x.what for x in left)}")
    if left:
        return Found(False, left, f"{left[0].what.replace('the INVALID index', 'the index')} is INVALID")
    return Found(False, (), f"{what} does not exist")


def _reindex_leftovers(cursor: CursorWrapper, effect: Effect) -> tuple[Leftover, ...]:
    name = _name(effect.relation) if effect.target in ("INDEX", "TABLE") else ""
    where = {
        "INDEX": "i.indrelid = (SELECT indrelid FROM pg_index WHERE indexrelid = to_regclass(%(name)s))",
        "TABLE": "i.indrelid IN (to_regclass(%(name)s), "
        "(SELECT reltoastrelid FROM pg_class WHERE oid = to_regclass(%(name)s)))",
        "SCHEMA": "(t.relnamespace = to_regnamespace(%(schema)s) OR t.oid IN "
        "(SELECT reltoastrelid FROM pg_class WHERE relnamespace = to_regnamespace(%(schema)s)))",
    }.get(effect.target, "true")
    cursor.execute(
        _INDEX + "JOIN pg_class t ON t.oid = i.indrelid "
        f"WHERE NOT i.indisvalid AND c.relname ~ %(cc)s AND {where} ORDER BY c.oid",
        {"name": name, "schema": ident(*effect.relation) if effect.target == "SCHEMA" else "", "cc": _CC},
    )
    return tuple(_drop(r[0], r[1]) for r in cursor.fetchall())


def _detach(cursor: CursorWrapper, effect: Effect) -> Found:
    parent, part = _name(effect.relation), _name(effect.name)
    cursor.execute(
        "SELECT to_regclass(%s) IS NOT NULL, (SELECT inhdetachpending FROM pg_inherits "
        "WHERE inhrelid = to_regclass(%s) AND inhparent = to_regclass(%s))",
        [part, part, parent],
    )
    exists, pending = cursor.fetchone()
    label = ".".join(effect.name)
    if pending:
        fix = f"ALTER TABLE {ident(*effect.relation)} DETACH PARTITION {ident(*effect.name)} FINALIZE"
        left = Leftover(f"the partition {label} pending detach", fix, finishes=True)
        return Found(False, (left,), f"the partition {label} is still pending detach")
    if exists and pending is None:
        return Found(True)
    return Found(False, (), f"the partition {label} is {'still attached' if exists else 'gone'}")


# -- status: one catalog query for the whole database --------------------------------------------

STATUS_SQL = (  # the candidates first (few), then their names: a join over every index cost twice as much
    "SELECT 'index', n.nspname::text, t.relname::text, c.relname::text, i.indisvalid, NULL::text "
    "FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE NOT indisvalid UNION ALL SELECT oid FROM pg_class "
    f"WHERE relkind = 'i' AND relname LIKE '%\\_cc%' AND relname ~ '{_CC}') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "UNION ALL SELECT 'detach', pn.nspname::text, p.relname::text, c.relname::text, false, cn.nspname::text "
    "FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent "
    "JOIN pg_namespace pn ON pn.oid = p.relnamespace JOIN pg_namespace cn ON cn.oid = c.relnamespace "
    "WHERE h.inhdetachpending"
)


@dataclass(frozen=True)
class CatalogLeftover:
    """An object that an interrupted or failed non-transactional statement left, and how to fix it."""

    what: str
    table: str
    fix: str

    def as_dict(self) -> dict:
        return {"what": self.what, "table": self.table, "fix": self.fix}


def catalog_leftovers(
    cursor: CursorWrapper, texts: Iterable[str] = (), schema: str | None = None
) -> list[CatalogLeftover]:
    """Return the INVALID and ``_ccnew``/``_ccold`` indexes and the partitions pending detach.

    Only those whose table or index name one of ``texts`` (the tree's SQL files) mentions, and in
    ``schema`` when given. One catalog query; the files are read only when it finds something.
    """
    cursor.execute(STATUS_SQL)
    rows = cursor.fetchall()
    if not rows:
        return []
    words: set[str] = set()
    for text in texts:
        words.update(w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text))
    out = []
    for kind, nsp, table, name, valid, part_schema in rows:
        named = {table.lower(), name.lower(), re.sub(_CC, "", name).lower()}
        if not named & words or (schema is not None and nsp != schema):
            continue
        if kind == "detach":
            fix = f"ALTER TABLE {ident(nsp, table)} DETACH PARTITION {ident(part_schema, name)} FINALIZE;"
            what = f"partition {part_schema}.{name} pending detach from {nsp}.{table}"
            out.append(CatalogLeftover(what, table, fix))
            continue
        what = f"{'INVALID ' if not valid else ''}index {nsp}.{name} on {table}"
        if re.search(_CC, name):
            what += " (left by an interrupted REINDEX CONCURRENTLY)"
        drop = f"DROP INDEX CONCURRENTLY IF EXISTS {ident(nsp, name)};"
        out.append(CatalogLeftover(what, table, drop))
    return out
