"""A normalised snapshot of one database's schema, read from the catalogs, and the differences of two.

Public API (used by ``sqlmigrate_verify`` and by test-database templates)::

    snap = take(connection)                  # one catalog query (two with row_counts=True)
    diff(before, after) -> list[Difference]  # added / removed / changed objects, both definitions
    digest(snap) -> str                      # sha256 of a canonical JSON form: equal schemas, equal digests

A snapshot maps an object's identity, ``(kind, name)`` such as ``("table", "public.users")``
or ``("column", "public.users.email")``, to its definition: one readable, canonical string
built by the server (``pg_get_indexdef``, ``pg_get_constraintdef``, ``format_type``, ...),
not pg_dump output, whose text changes between versions. Covered: schemas, tables (kind,
persistence, row security, partitioning, options), columns (type, collation, nullability,
default, identity, generated), constraints, indexes (definition and validity), sequences,
views and materialized views, functions/procedures/aggregates (signature, attributes and an
md5 of the source), triggers, enum (labels in order), composite, range and domain types,
extensions, row security policies and comments. Objects that belong to an extension are
covered by the extension's version. Left out: ownership and privileges, column order, data
(but ``row_counts=True`` keeps a row count per table), rules, publications, event triggers.

nixmig's own tables (the tracking table, its ``_progress`` and ``_verify`` tables) are left
out by default, with everything that hangs off them (columns, indexes, sequences).
Definitions are compared as strings, so snapshots should be compared on one server version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable

from . import conf

Key = tuple[str, str]

# The order in which kinds are listed in reports: containers before what they contain.
KIND_ORDER = ("extension", "schema", "type", "domain", "sequence", "table", "column", "constraint", "index",
              "view", "materialized view", "function", "procedure", "aggregate", "trigger", "policy", "comment")

_SQL = r"""
WITH ex AS (
    SELECT r AS oid FROM unnest(%s::text[]) AS n, LATERAL to_regclass(n) AS r WHERE r IS NOT NULL
), exseq AS (
    SELECT d.objid AS oid FROM pg_depend d JOIN ex ON d.refobjid = ex.oid
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
), ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\_toast%%'
      AND nspname NOT LIKE 'pg\_temp\_%%'
), extm AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
), rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.reloptions, c.relispartition, ns.nspname, ns.nspname || '.' || c.relname AS qname
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I')
      AND c.oid NOT IN (SELECT oid FROM ex) AND c.oid NOT IN (SELECT oid FROM exseq)
      AND NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = 'pg_class'::regclass AND extm.objid = c.oid)
)
SELECT 'schema', nspname, '' FROM ns
WHERE NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = 'pg_namespace'::regclass AND extm.objid = ns.oid)
UNION ALL
SELECT 'extension', e.extname, 'version ' || e.extversion || ' in schema ' || n.nspname
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'
UNION ALL
SELECT 'table', r.qname,
       concat_ws(' ', CASE r.relpersistence WHEN 'u' THEN 'unlogged' END,
                 CASE r.relkind WHEN 'p' THEN 'partitioned table' WHEN 'f' THEN 'foreign table' ELSE 'table' END,
                 CASE WHEN r.relkind = 'p' THEN 'PARTITION BY ' || pg_get_partkeydef(r.oid) END,
                 CASE WHEN r.relispartition THEN 'PARTITION OF ' || (SELECT i.inhparent::regclass::text
                     FROM pg_inherits i WHERE i.inhrelid = r.oid) || ' ' || pg_get_expr(c.relpartbound, r.oid) END,
                 CASE WHEN NOT r.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = r.oid)
                      THEN 'INHERITS (' || (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno)
                                           FROM pg_inherits i WHERE i.inhrelid = r.oid) || ')' END,
                 CASE WHEN r.reloptions IS NOT NULL THEN 'WITH (' || array_to_string(r.reloptions, ', ') || ')' END,
                 CASE WHEN r.relrowsecurity THEN 'ROW LEVEL SECURITY' END,
                 CASE WHEN r.relforcerowsecurity THEN 'FORCE ROW LEVEL SECURITY' END)
FROM rel r JOIN pg_class c ON c.oid = r.oid WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'column', r.qname || '.' || a.attname,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attcollation <> t.typcollation THEN 'COLLATE ' || co.collname END,
                 CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                 CASE WHEN a.attgenerated = 's' THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                      WHEN a.attgenerated = 'v' THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') VIRTUAL'
                      WHEN d.adbin IS NOT NULL THEN 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END,
                 CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY'
                                    WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END)
FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'constraint', coalesce(r.qname, tn.nspname || '.' || ty.typname) || '.' || k.conname,
       pg_get_constraintdef(k.oid)
FROM pg_constraint k
LEFT JOIN rel r ON r.oid = k.conrelid
LEFT JOIN pg_type ty ON ty.oid = k.contypid
LEFT JOIN ns tn ON tn.oid = ty.typnamespace
WHERE k.contype <> 'n' AND ((k.conrelid <> 0 AND r.oid IS NOT NULL) OR (k.contypid <> 0 AND tn.oid IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = 'pg_type'::regclass AND extm.objid = ty.oid)))
UNION ALL
SELECT 'index', r.qname, pg_get_indexdef(r.oid) || CASE WHEN x.indisvalid THEN '' ELSE ' (INVALID)' END
FROM rel r JOIN pg_index x ON x.indexrelid = r.oid
WHERE r.relkind IN ('i', 'I') AND x.indrelid NOT IN (SELECT oid FROM ex)
UNION ALL
SELECT 'sequence', r.qname,
       concat_ws(' ', format_type(s.seqtypid, NULL), 'START', s.seqstart, 'INCREMENT', s.seqincrement,
                 'MINVALUE', s.seqmin, 'MAXVALUE', s.seqmax, 'CACHE', s.seqcache,
                 CASE WHEN s.seqcycle THEN 'CYCLE' END,
                 (SELECT 'OWNED BY ' || d.refobjid::regclass::text || '.' || a.attname
                  FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
                    AND d.deptype IN ('a', 'i') LIMIT 1))
FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid WHERE r.relkind = 'S'
UNION ALL
SELECT CASE r.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END, r.qname,
       trim(pg_get_viewdef(r.oid)) || CASE WHEN r.reloptions IS NOT NULL
                                           THEN ' WITH (' || array_to_string(r.reloptions, ', ') || ')' ELSE '' END
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'function' ELSE 'function' END,
       ns.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       concat_ws(' ', CASE WHEN p.prokind <> 'p' THEN 'RETURNS ' || pg_get_function_result(p.oid) END,
                 'LANGUAGE ' || l.lanname,
                 CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' END,
                 CASE WHEN p.proisstrict THEN 'STRICT' END,
                 CASE WHEN p.prosecdef THEN 'SECURITY DEFINER' END,
                 CASE WHEN p.proleakproof THEN 'LEAKPROOF' END,
                 CASE p.proparallel WHEN 's' THEN 'PARALLEL SAFE' WHEN 'r' THEN 'PARALLEL RESTRICTED' END,
                 CASE WHEN p.proconfig IS NOT NULL THEN 'SET ' || array_to_string(p.proconfig, ', ') END,
                 'body md5 ' || md5(coalesce(p.prosrc, '') || coalesce(p.probin, '')
                                    || coalesce(pg_get_function_sqlbody(p.oid), '')))
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = 'pg_proc'::regclass AND extm.objid = p.oid)
UNION ALL
SELECT 'trigger', r.qname || '.' || g.tgname,
       pg_get_triggerdef(g.oid) || CASE g.tgenabled WHEN 'D' THEN ' (DISABLED)' WHEN 'R' THEN ' (ENABLE REPLICA)'
                                                    WHEN 'A' THEN ' (ENABLE ALWAYS)' ELSE '' END
FROM pg_trigger g JOIN rel r ON r.oid = g.tgrelid WHERE NOT g.tgisinternal
UNION ALL
SELECT CASE ty.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, ns.nspname || '.' || ty.typname,
       CASE ty.typtype
         WHEN 'e' THEN 'ENUM (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                    FROM pg_enum e WHERE e.enumtypid = ty.oid) || ')'
         WHEN 'c' THEN 'COMPOSITE (' || (SELECT string_agg(quote_ident(a.attname) || ' '
                                                           || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                         FROM pg_attribute a WHERE a.attrelid = ty.typrelid AND a.attnum > 0
                                           AND NOT a.attisdropped) || ')'
         WHEN 'r' THEN 'RANGE (SUBTYPE = ' || (SELECT format_type(rg.rngsubtype, NULL) FROM pg_range rg
                                              WHERE rg.rngtypid = ty.oid) || ')'
         WHEN 'd' THEN concat_ws(' ', format_type(ty.typbasetype, ty.typtypmod),
                                 CASE WHEN ty.typnotnull THEN 'NOT NULL' END,
                                 CASE WHEN ty.typdefault IS NOT NULL THEN 'DEFAULT ' || ty.typdefault END)
         ELSE ty.typtype::text END
FROM pg_type ty JOIN ns ON ns.oid = ty.typnamespace
WHERE (ty.typtype IN ('e', 'r', 'd') OR (ty.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = ty.typrelid) = 'c'))
  AND NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = 'pg_type'::regclass AND extm.objid = ty.oid)
UNION ALL
SELECT 'policy', r.qname || '.' || po.polname,
       concat_ws(' ', CASE WHEN po.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                 'FOR ' || CASE po.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                          WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                 'TO ' || (SELECT string_agg(CASE WHEN rl = 0 THEN 'public' ELSE rl::regrole::text END, ', ' ORDER BY 1)
                           FROM unnest(po.polroles) AS rl),
                 'USING (' || pg_get_expr(po.polqual, po.polrelid) || ')',
                 'WITH CHECK (' || pg_get_expr(po.polwithcheck, po.polrelid) || ')')
FROM pg_policy po JOIN rel r ON r.oid = po.polrelid
UNION ALL
SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
FROM pg_description d
WHERE d.objoid >= 16384 AND d.classoid <> 'pg_extension'::regclass
  AND d.objoid NOT IN (SELECT oid FROM ex) AND d.objoid NOT IN (SELECT oid FROM exseq)
  AND NOT EXISTS (SELECT 1 FROM extm WHERE extm.classid = d.classoid AND extm.objid = d.objoid)
  AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN ex ON ex.oid = x.indrelid
                  WHERE d.classoid = 'pg_class'::regclass AND x.indexrelid = d.objoid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k JOIN ex ON ex.oid = k.conrelid
                  WHERE d.classoid = 'pg_constraint'::regclass AND k.oid = d.objoid)
"""

_TABLES_SQL = r"""
SELECT c.oid::regclass::text, n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%%' AND n.nspname NOT LIKE 'pg\_temp\_%%'
  AND c.oid NOT IN (SELECT r FROM unnest(%s::text[]) AS t, LATERAL to_regclass(t) AS r WHERE r IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.deptype = 'e' AND d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid)
"""


@dataclass(frozen=True)
class Snapshot:
    """The schema of one database: object identity -> definition, and row counts when taken."""

    objects: dict[Key, str]
    rows: dict[str, int] | None = None  # "schema.table" -> row count, with take(row_counts=True)
    server_version: int = 0
    seconds: float = field(default=0.0, compare=False)

    def __len__(self) -> int:
        return len(self.objects)

    def __contains__(self, key: Key) -> bool:
        return key in self.objects

    def get(self, kind: str, name: str) -> str | None:
        """Return the definition of one object, or None when it does not exist."""
        return self.objects.get((kind, name))

    def names(self, kind: str) -> list[str]:
        """Return the names of every object of one kind, sorted."""
        return sorted(name for k, name in self.objects if k == kind)


@dataclass(frozen=True)
class Difference:
    """One object that is only in one snapshot, or defined differently in the two."""

    kind: str  # "table", "column", ... or "rows" for a row count
    name: str  # schema-qualified identity, e.g. "public.users.email"
    change: str  # "added" (only in b), "removed" (only in a) or "changed"
    before: str | None  # the definition in a (None when added)
    after: str | None  # the definition in b (None when removed)

    @property
    def level(self) -> str:
        """'warning' for a row count (data), 'error' for a schema difference."""
        return "warning" if self.kind == "rows" else "error"

    @property
    def display_name(self) -> str:
        """The name without the ``public.`` prefix, as people write it."""
        return self.name[7:] if self.name.startswith("public.") else self.name

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "change": self.change, "before": self.before,
                "after": self.after, "level": self.level}


def nixmig_tables(table: str | None = None) -> tuple[str, ...]:
    """Return nixmig's own tables (tracking, progress, verify results), as quoted regclass names."""
    parts = (table or conf.table()).split(".")
    schema = [f'"{p}"' for p in parts[:-1]]
    return tuple(".".join(schema + [f'"{parts[-1]}{suffix}"']) for suffix in ("", "_progress", "_verify"))


def take(connection, *, exclude_tables: Iterable[str] | None = None, row_counts: bool = False) -> Snapshot:
    """Read the schema of ``connection``'s database (a Django connection) from the catalogs.

    ``exclude_tables`` names tables to leave out (regclass syntax: ``migrations`` or
    ``"schema"."name"``); default: nixmig's own tables. ``row_counts`` adds an exact row count
    per table (one more query, scanning every table: meant for small scratch databases).
    Read-only: it never writes, so it is safe on a live database.
    """
    import time

    started = time.perf_counter()
    excluded = list(nixmig_tables() if exclude_tables is None else exclude_tables)
    with connection.cursor() as cursor:
        cursor.execute(_SQL, [excluded])
        objects = {(kind, name): definition for kind, name, definition in cursor.fetchall()}
        rows = None
        if row_counts:
            rows = _count_rows(cursor, excluded)
    version = connection.pg_version if hasattr(connection, "pg_version") else 0
    return Snapshot(objects, rows, version, time.perf_counter() - started)


def _count_rows(cursor, excluded: list[str]) -> dict[str, int]:
    cursor.execute(_TABLES_SQL, [excluded])
    tables = cursor.fetchall()
    if not tables:
        return {}
    counts: dict[str, int] = {}
    for start in range(0, len(tables), 500):  # one query per 500 tables keeps the plan small
        chunk = tables[start:start + 500]
        cursor.execute(" UNION ALL ".join(
            f"SELECT {i}, count(*) FROM {regclass}" for i, (regclass, _) in enumerate(chunk)))
        for i, count in cursor.fetchall():
            counts[chunk[i][1]] = count
    return counts


def diff(a: Snapshot, b: Snapshot) -> list[Difference]:
    """Return what differs from ``a`` to ``b``, object by object, containers first.

    Row counts are compared when both snapshots have them, for tables present in both.
    """
    out = []
    for key in a.objects.keys() | b.objects.keys():
        before, after = a.objects.get(key), b.objects.get(key)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        out.append(Difference(key[0], key[1], change, before, after))
    if a.rows is not None and b.rows is not None:
        for table in a.rows.keys() & b.rows.keys():
            if a.rows[table] != b.rows[table]:
                out.append(Difference("rows", table, "changed", str(a.rows[table]), str(b.rows[table])))
    order = {kind: i for i, kind in enumerate(KIND_ORDER + ("rows",))}
    out.sort(key=lambda d: (order.get(d.kind, len(order)), d.name, d.change))
    return out


def digest(snapshot: Snapshot) -> str:
    """Return a stable sha256 of the snapshot (objects, and row counts when taken)."""
    canonical = {"objects": sorted([kind, name, definition] for (kind, name), definition in snapshot.objects.items()),
                 "rows": sorted(snapshot.rows.items()) if snapshot.rows is not None else None}
    text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
