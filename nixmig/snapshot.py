"""A normalised snapshot of one database's schema, read from the catalogs, and the differences of two.

Public API (used by ``sqlmigrate_verify`` and by test-database templates)::

    snap = take(connection)                  # two catalog queries, read-only (about 50 ms at 520 tables)
    snap = take(connection, row_counts=True) # also an exact row count per table
    snap = take(connection, previous=snap)   # incremental: re-reads only what changed since ``snap``
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
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from . import conf, sqlnames

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

Key = tuple[str, str]

_GENERIC: weakref.WeakSet = weakref.WeakSet()  # driver connections whose session uses generic plans

# The order in which kinds are listed in reports: containers before what they contain.
KIND_ORDER = (
    "extension",
    "schema",
    "type",
    "domain",
    "sequence",
    "table",
    "column",
    "constraint",
    "index",
    "view",
    "materialized view",
    "function",
    "procedure",
    "aggregate",
    "trigger",
    "policy",
    "comment",
)

# Catalogs whose rows carry an oid and can be deleted without their group's head row
# (DROP CONSTRAINT, DROP TRIGGER, ...): the oids of the snapshot's rows in them are kept, so
# the next incremental snapshot can find which were deleted.
_TRACKED = (
    "pg_class",
    "pg_attrdef",
    "pg_constraint",
    "pg_trigger",
    "pg_policy",
    "pg_rewrite",
    "pg_proc",
    "pg_type",
    "pg_namespace",
)

# Catalogs that an incremental snapshot scans for rows written since the previous one.
_SCANNED = (
    "pg_class",
    "pg_attribute",
    "pg_attrdef",
    "pg_constraint",
    "pg_index",
    "pg_trigger",
    "pg_policy",
    "pg_rewrite",
    "pg_sequence",
    "pg_proc",
    "pg_type",
    "pg_enum",
    "pg_namespace",
)

_EXCLUDED = r"""
WITH ex AS (
    SELECT r AS oid FROM unnest(%s::text[]) AS n, LATERAL to_regclass(n) AS r WHERE r IS NOT NULL
), exseq AS (
    SELECT d.objid AS oid FROM ex JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = ex.oid
    WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
), ns AS (
    SELECT oid, nspname, xmin FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\_toast%%'
      AND nspname NOT LIKE 'pg\_temp\_%%'
)"""


def _not_extension(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass AND e.objid = {oid} "
        "AND e.objsubid = 0 AND e.deptype = 'e')"
    )


_REL = (
    r"""
, rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.reloptions, c.relispartition, c.reltype, ns.nspname, ns.nspname || '.' || c.relname AS qname
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I', 'c') AND {relfilter}
      AND c.oid NOT IN (SELECT oid FROM ex) AND c.oid NOT IN (SELECT oid FROM exseq)
      AND """
    + _not_extension("pg_class", "c.oid")
    + r"""
)"""
)

_TYPES_OF_OURS = (
    "(t.typtype IN ('e', 'r', 'd') OR (t.typtype = 'c' AND t.typrelid IN (SELECT oid FROM rel WHERE relkind = 'c')))"
    " AND " + _not_extension("pg_type", "t.oid")
)

_WRITES = (
    r"""
UNION ALL
SELECT 'writes', c.oid, c.oid, pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_deleted(c.oid),
       ns.nspname || '.' || c.relname, quote_ident(ns.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN unnest(%s::oid[], %s::bigint[]) AS p(oid, n) ON p.oid = c.oid
WHERE c.relkind = 'r' AND %s AND c.oid NOT IN (SELECT oid FROM ex)
  AND (p.n IS DISTINCT FROM pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_deleted(c.oid)
       OR age(c.xmin) <= age(%s::bigint::text::xid) OR age(ns.xmin) <= age(%s::bigint::text::xid))
UNION ALL
SELECT 'deleted', NULL, NULL, pg_stat_get_tuples_deleted(cat::regclass), cat, NULL
FROM unnest(ARRAY['"""
    + "', '".join(_TRACKED)
    + r"""']) AS cat
UNION ALL
SELECT 'written', NULL, NULL, pg_stat_get_tuples_inserted(cat::regclass) + pg_stat_get_tuples_updated(cat::regclass),
       cat, NULL
FROM unnest(ARRAY['"""
    + "', '".join(_SCANNED)
    + r"""']) AS cat
UNION ALL
SELECT 'since', NULL, NULL,
       -- Rows written later carry an xid from the next one to be assigned on, or from a transaction
       -- of this database still running (other databases' transactions can't write our catalogs,
       -- so the cluster-wide oldest running xid, held back by any long transaction, is not used).
       least(pg_snapshot_xmax(pg_current_snapshot())::text::bigint %% 4294967296,
             (SELECT min(a.backend_xid::text::bigint) FROM pg_stat_activity a
              WHERE a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))),
       NULL, NULL
"""
)

# Query 1 of a full snapshot: every catalog row of our objects with the group it belongs to.
# A group is a relation with everything hanging off it (columns, defaults, constraints,
# indexes, triggers, policies, rules), a function, a type, or a schema. Also: per table its
# count of rows written, per catalog its count of rows deleted, and the oldest transaction
# still running (every later catalog write has an xmin at or after it).
_MEMBERS = (
    _EXCLUDED
    + _REL.replace("{relfilter}", "TRUE")
    + r"""
SELECT 'pg_class', r.oid, CASE WHEN r.relkind IN ('i', 'I') THEN x.indrelid ELSE r.oid END, NULL::bigint, NULL::text, NULL::text
FROM rel r LEFT JOIN pg_index x ON x.indexrelid = r.oid
UNION ALL
SELECT 'pg_attrdef', d.oid, d.adrelid, NULL, NULL, NULL FROM pg_attrdef d JOIN rel r ON r.oid = d.adrelid
UNION ALL
SELECT 'pg_constraint', k.oid, coalesce(nullif(k.conrelid, 0), k.contypid), NULL, NULL, NULL
FROM pg_constraint k WHERE k.conrelid IN (SELECT oid FROM rel)
   OR k.contypid IN (SELECT t.oid FROM pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype = 'd')
UNION ALL
SELECT 'pg_trigger', g.oid, g.tgrelid, NULL, NULL, NULL FROM pg_trigger g JOIN rel r ON r.oid = g.tgrelid
WHERE NOT g.tgisinternal
UNION ALL
SELECT 'pg_policy', po.oid, po.polrelid, NULL, NULL, NULL FROM pg_policy po JOIN rel r ON r.oid = po.polrelid
UNION ALL
SELECT 'pg_rewrite', w.oid, w.ev_class, NULL, NULL, NULL FROM pg_rewrite w JOIN rel r ON r.oid = w.ev_class
UNION ALL
SELECT 'pg_proc', p.oid, p.oid, NULL, NULL, NULL FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE """
    + _not_extension("pg_proc", "p.oid")
    + r"""
UNION ALL
SELECT 'pg_type', t.oid, CASE t.typtype WHEN 'c' THEN t.typrelid ELSE t.oid END, NULL, NULL, NULL
FROM pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE """
    + _TYPES_OF_OURS
    + r"""
UNION ALL
SELECT 'pg_namespace', ns.oid, ns.oid, NULL, NULL, NULL FROM ns"""
    + _WRITES
)

# Query 1 of an incremental snapshot: the catalog rows written since the previous snapshot
# (xmin not older than its oldest running transaction), with their group, found by cheap
# scans that deparse nothing; rows deleted since are found from the catalogs' deleted-row
# counters (see take()). Plus what _MEMBERS adds at its end. Rows that no definition shows but
# that go with an object (array and multirange types, the internal triggers of a foreign key)
# are listed too, under their object's group, so that their deletion is counted exactly.
_CHANGES = (
    _EXCLUDED
    + r"""
, since AS (
    SELECT age(%s::bigint::text::xid) AS age
), w AS (
    SELECT u.cat, pg_stat_get_tuples_inserted(u.cat::regclass) + pg_stat_get_tuples_updated(u.cat::regclass) AS n,
           u.before
    FROM unnest(ARRAY['"""
    + "', '".join(_SCANNED)
    + r"""'], %s::bigint[]) AS u(cat, before)
)
SELECT 'pg_class', c.oid, coalesce((SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = c.oid), c.oid),
       NULL::bigint, NULL::text, NULL::text
FROM pg_class c WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_class') AND age(c.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_attribute', NULL, coalesce((SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = a.attrelid), a.attrelid),
       NULL, NULL, NULL
FROM pg_attribute a WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_attribute') AND age(a.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_attrdef', d.oid, d.adrelid, NULL, NULL, NULL FROM pg_attrdef d WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_attrdef') AND age(d.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_constraint', k.oid, coalesce(nullif(k.conrelid, 0), k.contypid), NULL, NULL, NULL
FROM pg_constraint k WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_constraint') AND age(k.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_index', NULL, x.indrelid, NULL, NULL, NULL FROM pg_index x WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_index') AND age(x.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_trigger', g.oid, g.tgrelid, NULL, NULL, NULL FROM pg_trigger g
WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_trigger') AND age(g.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_policy', po.oid, po.polrelid, NULL, NULL, NULL FROM pg_policy po WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_policy') AND age(po.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_rewrite', rw.oid, rw.ev_class, NULL, NULL, NULL FROM pg_rewrite rw
WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_rewrite') AND age(rw.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_sequence', NULL, s.seqrelid, NULL, NULL, NULL FROM pg_sequence s WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_sequence') AND age(s.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_proc', p.oid, p.oid, NULL, NULL, NULL FROM pg_proc p WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_proc') AND age(p.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_type', t.oid, CASE WHEN t.typtype = 'c' THEN t.typrelid
                               WHEN t.typtype = 'm' THEN (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid)
                               WHEN t.typelem <> 0 THEN (SELECT CASE e.typtype WHEN 'c' THEN e.typrelid ELSE e.oid END
                                                         FROM pg_type e WHERE e.oid = t.typelem)
                               ELSE t.oid END, NULL, NULL, NULL
FROM pg_type t WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_type') AND age(t.xmin) <= (SELECT age FROM since)
  AND (t.typtype IN ('e', 'r', 'd', 'c', 'm') OR t.typelem <> 0)
UNION ALL
SELECT 'pg_enum', NULL, e.enumtypid, NULL, NULL, NULL FROM pg_enum e WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_enum') AND age(e.xmin) <= (SELECT age FROM since)
UNION ALL
SELECT 'pg_namespace', n.oid, n.oid, NULL, NULL, NULL FROM pg_namespace n WHERE (SELECT w.n IS DISTINCT FROM w.before FROM w WHERE w.cat = 'pg_namespace') AND age(n.xmin) <= (SELECT age FROM since)
"""
    + _WRITES
)

# Query 2: the definitions of the groups asked for (all, or the changed ones and those that
# depend on them, whose text names them: a foreign key names the table it references, a
# column its type, a trigger its function), plus schemas, extensions and comments, which are
# few and always read.
_DEFINITIONS = (
    _EXCLUDED
    + r""", dirty AS (
    SELECT unnest(%s::oid[]) AS oid
), dirtyall AS (
    SELECT oid FROM dirty UNION SELECT t.oid FROM pg_type t JOIN dirty ON t.typrelid = dirty.oid
), want AS (
    SELECT oid AS grp FROM dirty
    UNION
    SELECT CASE d.classid
        WHEN 'pg_class'::regclass THEN coalesce((SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = d.objid), d.objid)
        WHEN 'pg_constraint'::regclass THEN (SELECT coalesce(nullif(k.conrelid, 0), k.contypid) FROM pg_constraint k
                                           WHERE k.oid = d.objid)
        WHEN 'pg_attrdef'::regclass THEN (SELECT a.adrelid FROM pg_attrdef a WHERE a.oid = d.objid)
        WHEN 'pg_trigger'::regclass THEN (SELECT g.tgrelid FROM pg_trigger g WHERE g.oid = d.objid)
        WHEN 'pg_rewrite'::regclass THEN (SELECT w.ev_class FROM pg_rewrite w WHERE w.oid = d.objid)
        WHEN 'pg_policy'::regclass THEN (SELECT po.polrelid FROM pg_policy po WHERE po.oid = d.objid)
        WHEN 'pg_type'::regclass THEN (SELECT CASE WHEN t.typrelid <> 0 THEN t.typrelid ELSE t.oid END FROM pg_type t
                                     WHERE t.oid = d.objid)
        ELSE d.objid END
    FROM pg_depend d
    WHERE d.refclassid = ANY(ARRAY['pg_class'::regclass, 'pg_type'::regclass, 'pg_proc'::regclass,
                                   'pg_namespace'::regclass])
      AND d.refobjid = ANY(ARRAY(SELECT oid FROM dirtyall)) AND d.deptype <> 'e'
)"""
    + _REL
    + r"""
SELECT grp, NULL::text, NULL::text, NULL::text FROM want WHERE %s
UNION ALL
SELECT NULL::oid, 'schema', nspname::text, '' FROM ns
WHERE """
    + _not_extension("pg_namespace", "ns.oid")
    + r"""
UNION ALL
SELECT NULL::oid, 'extension', e.extname, 'version ' || e.extversion || ' in schema ' || n.nspname
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'
UNION ALL
SELECT r.oid, 'table', r.qname,
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
SELECT r.oid, 'column', r.qname || '.' || a.attname,
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
SELECT r.oid, 'constraint', r.qname || '.' || k.conname, pg_get_constraintdef(k.oid)
FROM rel r JOIN pg_constraint k ON k.conrelid = r.oid
WHERE r.relkind IN ('r', 'p', 'f') AND k.contype <> 'n'
UNION ALL
SELECT ty.oid, 'constraint', ns.nspname || '.' || ty.typname || '.' || k.conname, pg_get_constraintdef(k.oid)
FROM pg_type ty JOIN ns ON ns.oid = ty.typnamespace JOIN pg_constraint k ON k.conrelid = 0 AND k.contypid = ty.oid
WHERE ty.typtype = 'd' AND {tgrp} AND """
    + _not_extension("pg_type", "ty.oid")
    + r"""
UNION ALL
SELECT x.indrelid, 'index', r.qname, pg_get_indexdef(r.oid) || CASE WHEN x.indisvalid THEN '' ELSE ' (INVALID)' END
FROM rel r JOIN pg_index x ON x.indexrelid = r.oid
WHERE r.relkind IN ('i', 'I') AND x.indrelid NOT IN (SELECT oid FROM ex)
UNION ALL
SELECT r.oid, 'sequence', r.qname,
       concat_ws(' ', format_type(s.seqtypid, NULL), 'START', s.seqstart, 'INCREMENT', s.seqincrement,
                 'MINVALUE', s.seqmin, 'MAXVALUE', s.seqmax, 'CACHE', s.seqcache,
                 CASE WHEN s.seqcycle THEN 'CYCLE' END,
                 (SELECT 'OWNED BY ' || d.refobjid::regclass::text || '.' || a.attname
                  FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
                    AND d.deptype IN ('a', 'i') LIMIT 1))
FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid WHERE r.relkind = 'S'
UNION ALL
SELECT r.oid, CASE r.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END, r.qname,
       trim(pg_get_viewdef(r.oid)) || CASE WHEN r.reloptions IS NOT NULL
                                           THEN ' WITH (' || array_to_string(r.reloptions, ', ') || ')' ELSE '' END
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT p.oid, CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'function' ELSE 'function' END,
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
WHERE {pgrp} AND """
    + _not_extension("pg_proc", "p.oid")
    + r"""
UNION ALL
SELECT r.oid, 'trigger', r.qname || '.' || g.tgname,
       pg_get_triggerdef(g.oid) || CASE g.tgenabled WHEN 'D' THEN ' (DISABLED)' WHEN 'R' THEN ' (ENABLE REPLICA)'
                                                    WHEN 'A' THEN ' (ENABLE ALWAYS)' ELSE '' END
FROM pg_trigger g JOIN rel r ON r.oid = g.tgrelid WHERE NOT g.tgisinternal
UNION ALL
SELECT CASE ty.typtype WHEN 'c' THEN ty.typrelid ELSE ty.oid END, CASE ty.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, ns.nspname || '.' || ty.typname,
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
WHERE {tgrp} AND (ty.typtype IN ('e', 'r', 'd') OR (ty.typtype = 'c' AND ty.oid IN (SELECT reltype FROM rel WHERE relkind = 'c')))
  AND """
    + _not_extension("pg_type", "ty.oid")
    + r"""
UNION ALL
SELECT r.oid, 'policy', r.qname || '.' || po.polname,
       concat_ws(' ', CASE WHEN po.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                 'FOR ' || CASE po.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                          WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                 'TO ' || (SELECT string_agg(CASE WHEN rl = 0 THEN 'public' ELSE rl::regrole::text END, ', ' ORDER BY 1)
                           FROM unnest(po.polroles) AS rl),
                 'USING (' || pg_get_expr(po.polqual, po.polrelid) || ')',
                 'WITH CHECK (' || pg_get_expr(po.polwithcheck, po.polrelid) || ')')
FROM pg_policy po JOIN rel r ON r.oid = po.polrelid
UNION ALL
SELECT NULL::oid, 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
FROM pg_description d
WHERE d.objoid >= 16384 AND d.classoid <> 'pg_extension'::regclass
  AND d.objoid NOT IN (SELECT oid FROM ex) AND d.objoid NOT IN (SELECT oid FROM exseq)
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid AND e.objid = d.objoid AND e.deptype = 'e')
  AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN ex ON ex.oid = x.indrelid
                  WHERE d.classoid = 'pg_class'::regclass AND x.indexrelid = d.objoid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k JOIN ex ON ex.oid = k.conrelid
                  WHERE d.classoid = 'pg_constraint'::regclass AND k.oid = d.objoid)
"""
)


def _definitions_sql(partial: bool) -> str:
    """Return the definitions query: of every group, or (partial) of the groups in ``want``."""
    if not partial:
        return _DEFINITIONS.replace("{relfilter}", "TRUE").replace("{pgrp}", "TRUE").replace("{tgrp}", "TRUE")
    return (
        _DEFINITIONS
        # = ANY(ARRAY(...)): an index scan by oid, whatever the generic plan guesses about ``want``
        .replace(
            "{relfilter}",
            "c.oid = ANY(ARRAY(SELECT grp FROM want) || ARRAY(SELECT x.indexrelid FROM pg_index x "
            "WHERE x.indrelid = ANY(ARRAY(SELECT grp FROM want))))",
        )
        .replace("{pgrp}", "p.oid = ANY(ARRAY(SELECT grp FROM want))")
        .replace(
            "{tgrp}",
            "ty.oid = ANY(ARRAY(SELECT grp FROM want UNION ALL SELECT reltype FROM rel WHERE relkind = 'c'))",
        )
    )


_FLUSH = "SELECT pg_stat_force_next_flush()"
_FULL_SQL = _definitions_sql(False)
_PARTIAL_SQL = _definitions_sql(True)


@dataclass(frozen=True)
class Snapshot:
    """The schema of one database: object identity -> definition, and row counts when taken."""

    objects: dict[Key, str]
    rows: dict[str, int] | None = None  # "schema.table" -> row count, with take(row_counts=True)
    server_version: int = 0
    seconds: float = field(default=0.0, compare=False)
    # What take(previous=...) reuses: objects per group, the oids of the rows of tracked
    # catalogs per group, the catalogs' deleted-row counters, per table (oid) its name, rows
    # written and row count, the exclusions, and the oldest transaction running when read.
    _groups: dict = field(default_factory=dict, compare=False, repr=False)
    _members: dict = field(default_factory=dict, compare=False, repr=False)
    _deleted: dict = field(default_factory=dict, compare=False, repr=False)
    _written: dict = field(default_factory=dict, compare=False, repr=False)
    _counts: dict = field(default_factory=dict, compare=False, repr=False)
    _excluded: tuple = field(default=(), compare=False, repr=False)
    _since: int | None = field(default=None, compare=False, repr=False)
    _recent: dict = field(
        default_factory=dict, compare=False, repr=False
    )  # rows new in this one, per catalog

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
    def row_counts(self) -> tuple[int, int]:
        """Return (before, after) of a "rows" difference: diff() gives one only for a table in both."""
        if self.before is None or self.after is None:
            raise ValueError(f"{self.kind} {self.name}: not a row count difference, it is {self.change}")
        return int(self.before), int(self.after)

    @property
    def level(self) -> str:
        """'warning' for a row count (data), 'error' for a schema difference."""
        return "warning" if self.kind == "rows" else "error"

    @property
    def display_name(self) -> str:
        """The name without the ``public.`` prefix, as people write it."""
        return self.name[7:] if self.name.startswith("public.") else self.name

    @property
    def frozen(self) -> bool:
        """True when the two definitions differ only by values frozen at creation (see ``unfrozen``)."""
        return (
            self.change == "changed"
            and self.kind != "rows"
            and unfrozen(self.before or "") == unfrozen(self.after or "")
        )

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "change": self.change,
            "before": self.before,
            "after": self.after,
            "level": self.level,
        }


def nixmig_tables(table: str | None = None) -> tuple[str, ...]:
    """Return nixmig's own tables (tracking, progress, verify results), as quoted regclass names."""
    return tuple(sqlnames.table(table or conf.table(), suffix) for suffix in ("", "_progress", "_verify"))


def take(
    connection: BaseDatabaseWrapper,
    *,
    exclude_tables: Iterable[str] | None = None,
    row_counts: bool = False,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Read the schema of ``connection``'s database (a Django connection) from the catalogs.

    ``exclude_tables`` names tables to leave out (regclass syntax: ``migrations`` or
    ``"schema"."name"``); default: nixmig's own tables. ``row_counts`` adds an exact row count
    per table. Read-only: it never writes, so it is safe on a live database.

    ``previous``, an earlier snapshot of the same database taken on the same connection,
    makes this one incremental: only groups of objects whose catalog rows were written or
    deleted since (and groups whose definitions name them) are deparsed again, and only
    tables written since are counted again. Deleted rows are found through the server's
    per-catalog statistics, which this connection flushes first (PostgreSQL 15+; older
    servers probe every known row), so schema changes must come through this connection
    (as in sqlmigrate_verify's scratch database) or be at least a second old.
    """
    started = time.perf_counter()
    excluded = tuple(nixmig_tables() if exclude_tables is None else exclude_tables)
    connection.ensure_connection()
    version = getattr(connection, "pg_version", 0) or 0
    reuse = previous is not None and previous._excluded == excluded and previous._since is not None
    # A server-side binding cursor of the driver. Incremental snapshots prepare their queries
    # once per connection (Django turns the driver's prepared statements off for connection
    # poolers; they are turned on for these queries only) and run them with a generic plan:
    # planning these unions costs more than running them. plan_cache_mode is set for the
    # session (Django prepares nothing, so nothing else is affected).
    raw = connection.connection
    threshold = raw.prepare_threshold
    try:
        raw.prepare_threshold = 0 if reuse else None
        with psycopg.Cursor(raw) as cursor:
            if row_counts and not reuse and version >= 150000:
                # This backend's statistics (rows written and deleted, catalogs included) reach the
                # shared statistics at its next idle point, at most once a second: make it the next one.
                # (An incremental snapshot sends this in the same round trip as its first query.)
                cursor.execute(_FLUSH, prepare=False)
            if reuse and raw not in _GENERIC:
                # and read statistics straight from shared memory, not by first copying every
                # table's entry of the whole cluster (stats_fetch_consistency = cache)
                cursor.execute("SET plan_cache_mode = force_generic_plan", prepare=False)
                cursor.execute("SET stats_fetch_consistency = none", prepare=False)
                _GENERIC.add(raw)
            return _take(cursor, excluded, version, row_counts, previous if reuse else None, started)
    finally:
        raw.prepare_threshold = threshold


def _take(
    cursor: psycopg.Cursor[Any],
    excluded: tuple,
    version: int,
    row_counts: bool,
    previous: Snapshot | None,
    started: float,
) -> Snapshot:
    if previous is not None:  # incremental
        before = [previous._written.get(cat) if version >= 150000 else None for cat in _SCANNED]
        known = previous._counts if previous.rows is not None else {}
        # One round trip: the statistics flush, then (after the idle point that flushes them) the changes,
        # and whether the rows the previous snapshot found new are still there: a down usually drops
        # what its up just made, so these are the rows most likely deleted (see _deleted_groups).
        likely_gone = previous._recent if version >= 150000 and any(previous._recent.values()) else {}
        probe = (
            [(_PROBE, [_array(likely_gone.get(cat, ())) for cat in _TRACKED], True)] if likely_gone else []
        )
        changes = [
            list(excluded),
            previous._since,
            _array(before),
            _array(known),
            _array(c[1] for c in known.values()),
            row_counts,
            previous._since,
            previous._since,
        ]
        flush = [(_FLUSH, None, False)] if version >= 150000 else []
        results = _batch(cursor, [*flush, (_CHANGES, changes, True), *probe], sync=True)
        speculative: dict[str, list] = {cat: [] for cat in _TRACKED}
        for i, oid in results[-1] if likely_gone else ():
            speculative[_TRACKED[i]].append(oid)
        first = results[-2] if likely_gone else results[-1]
        members = {cat: dict(previous._members.get(cat, {})) for cat in _TRACKED}
    else:
        cursor.execute(_MEMBERS, [list(excluded), None, None, row_counts, None, None], prepare=True)
        first = cursor.fetchall()
        members = {cat: {} for cat in _TRACKED}
    dirty: set = set()
    new_rows: list = []
    writes: dict = {}
    deleted: dict = {}
    written: dict = {}
    since = None
    for cat, oid, grp, n, name, regclass in first:
        if cat == "writes":
            writes[oid] = (n, name, regclass)
        elif cat == "deleted":
            deleted[name] = n
        elif cat == "written":
            written[name] = n
        elif cat == "since":
            since = n
        elif previous is not None:
            dirty.add(grp)
            if oid is not None and cat in members:
                new_rows.append((cat, oid, grp))
        else:
            members[cat][oid] = grp
    if previous is not None:
        dirty.update(_deleted_groups(cursor, members, deleted, previous._deleted, version, speculative))
        dirty.discard(None)
        definitions = (_PARTIAL_SQL, [list(excluded), _array(sorted(dirty)), True], True)
    else:
        definitions = (_FULL_SQL, [list(excluded), [], False], True)
    # One round trip: the definitions, and the row counts of the tables written since.
    stale = [(oid, *known) for oid, known in writes.items()] if row_counts else []
    chunks = [stale[i : i + 500] for i in range(0, len(stale), 500)]  # one query per 500 tables: small plans
    *counted, defined = _batch(cursor, [*((_count_sql(chunk), None, False) for chunk in chunks), definitions])
    fresh: dict = {}
    reread: set = set()
    for grp, kind, name, definition in defined:
        if kind is None:
            reread.add(grp)
        else:
            fresh.setdefault(grp, {})[(kind, name)] = definition
    groups: dict = {}
    if previous is not None:
        groups = {g: objects for g, objects in previous._groups.items() if g is not None and g not in reread}
    groups.update(fresh)  # a group read again and found empty is gone
    recent: dict[str, list] = {}
    for (
        cat,
        oid,
        grp,
    ) in new_rows:  # every new row, ours or not (a toast table): deletions are then counted exactly
        members[cat][oid] = grp
        recent.setdefault(cat, []).append(oid)
    objects = _objects(groups, previous)
    rows: dict[str, int] | None = None
    counts: dict | None = None
    if row_counts:
        old = previous._counts if previous is not None and previous.rows is not None else {}
        counts = {oid: known for oid, known in old.items() if oid in groups}
        for chunk, found in zip(chunks, counted, strict=True):
            for i, count in found:
                oid, inserted, name, quoted = chunk[i]
                counts[oid] = (name, inserted, count, quoted)
        rows = {name: count for name, _, count, _ in counts.values()}
    return Snapshot(
        objects,
        rows,
        version,
        time.perf_counter() - started,
        groups,
        members,
        deleted,
        written,
        counts or {},
        excluded,
        since,
        recent,
    )


def _deleted_groups(
    cursor: psycopg.Cursor[Any],
    members: dict,
    deleted: dict,
    before: dict,
    version: int,
    speculative: dict | None = None,
) -> set:
    """Return the groups that lost a row of a tracked catalog since the deleted-row counters ``before``.

    The counters say how many rows each catalog lost; a down usually drops what its up just
    created, so the newest known oids are probed first, and the others only when not all
    deletions were found among them (or when the counters can't be trusted: before
    PostgreSQL 15, or rows that were never known, such as an extension's). ``speculative`` holds,
    per catalog, the rows found gone among those the previous snapshot found new (probed in the
    same round trip as the changes): when they are all the deletions counted, nothing more is probed.
    """
    wanted: dict[str, int | None] = {}
    for cat in _TRACKED:
        if not members[cat]:
            continue
        if version < 150000 or deleted.get(cat) is None or before.get(cat) is None:
            wanted[cat] = None  # unknown: probe them all
        elif deleted[cat] > before[cat]:
            wanted[cat] = deleted[cat] - before[cat]
    gone: set = set()
    if not wanted:
        return gone
    found: dict[str, list] = {}
    for cat, n in list(wanted.items()):
        known_gone = [oid for oid in (speculative or {}).get(cat, ()) if oid in members[cat]]
        if n is not None and len(known_gone) >= n:
            found[cat] = known_gone
            del wanted[cat]
    newest = {
        cat: (sorted(members[cat], reverse=True)[: max(4 * n, 64)] if n else list(members[cat]))
        for cat, n in wanted.items()
    }
    found.update(_probe(cursor, newest))
    rest = {}
    for cat, n in wanted.items():
        if n is not None and len(found.get(cat, ())) < n and len(newest[cat]) < len(members[cat]):
            probed = set(newest[cat])
            rest[cat] = [oid for oid in members[cat] if oid not in probed]
    for cat, oids in _probe(cursor, rest).items():
        found.setdefault(cat, []).extend(oids)
    for cat, oids in found.items():
        for oid in oids:
            gone.add(members[cat].pop(oid))
    return gone


# Which of the given oids no longer exist, per tracked catalog (an empty array for a catalog not probed).
_PROBE = " UNION ALL ".join(
    f"SELECT {i}, x FROM unnest(%s::oid[]) AS x WHERE NOT EXISTS (SELECT 1 FROM {cat} WHERE oid = x)"
    for i, cat in enumerate(_TRACKED)
)


def _probe(cursor: psycopg.Cursor[Any], oids: dict[str, list]) -> dict[str, list]:
    """Return, per catalog, which of these oids no longer exist there (one prepared query)."""
    if not any(oids.values()):
        return {}
    cursor.execute(_PROBE, [_array(oids.get(cat, ())) for cat in _TRACKED], prepare=True)
    out: dict[str, list] = {}
    for i, oid in cursor.fetchall():
        out.setdefault(_TRACKED[i], []).append(oid)
    return out


def _array(values: Iterable[int | None]) -> str:
    """An array of integers as its text form: psycopg dumps a list element by element, in Python."""
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def _objects(groups: dict, previous: Snapshot | None) -> dict[Key, str]:
    """Return every object of ``groups``: the previous snapshot's, less the groups read again, plus those.

    Falls back to building it whole when an object belongs to two groups (then which one wins
    depends on the order), so the result is always the one the whole build gives.
    """
    kept = previous._groups if previous is not None else {}
    if previous is not None and kept:
        objects = dict(previous.objects)
        for g, group in kept.items():
            if groups.get(g) is not group:  # read again, or gone
                for key in group:
                    objects.pop(key, None)
        for g, group in groups.items():
            if kept.get(g) is not group:
                objects.update(group)
        if len(objects) == sum(map(len, groups.values())):
            return objects
    objects = {}
    for group in groups.values():
        objects.update(group)
    return objects


def _count_sql(chunk: list) -> str:
    """The query that counts the rows of the tables of ``chunk`` (oid, written, name, quoted name)."""
    return " UNION ALL ".join(
        f"SELECT {i}, count(*) FROM ONLY {quoted}" for i, (_, _, _, quoted) in enumerate(chunk)
    )


def _batch(cursor: psycopg.Cursor[Any], queries: list[tuple], *, sync: bool = False) -> list[list]:
    """Run ``queries`` (each: sql, params, prepare) in one round trip; return the rows of each.

    They go through one pipeline, each on a cursor of its own (the last on ``cursor``); ``sync``
    ends the implicit transaction after each, so the server reaches an idle point in between
    (where it flushes its statistics). Without pipeline support in the driver's libpq they run
    one after the other.
    """
    raw = cursor.connection
    cursors = [psycopg.Cursor(raw) for _ in queries[1:]] + [cursor]
    try:
        if not psycopg.Pipeline.is_supported():
            for cur, (sql, params, prepare) in zip(cursors, queries, strict=True):
                cur.execute(sql, params, prepare=prepare)
        else:
            with raw.pipeline() as pipeline:
                for cur, (sql, params, prepare) in zip(cursors, queries, strict=True):
                    cur.execute(sql, params, prepare=prepare)
                    if sync:
                        pipeline.sync()
        return [cur.fetchall() for cur in cursors]
    finally:
        for cur in cursors[:-1]:
            cur.close()


def diff(a: Snapshot, b: Snapshot) -> list[Difference]:
    """Return what differs from ``a`` to ``b``, object by object, containers first.

    Row counts are compared when both snapshots have them, for tables present in both.
    """
    out = []
    for key in _candidates(a, b):
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


# Literals that the server wrote into a definition by evaluating an expression when the object was
# created: 'now'::timestamp, DEFAULT 'now', 'today'::date in a view or a default, a uuid or an md5
# made by a DO block that formats the statement. Each run of the same SQL writes another value.
_FROZEN = re.compile(
    r"'(?:\d{4}-\d{2}-\d{2}(?:[ T][0-9:.]+)?(?:[+-]\d{2}(?::?\d{2})?)?(?: BC)?"
    r"|\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}(?::?\d{2})?)?"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{32})'",
    re.IGNORECASE,
)


def unfrozen(definition: str) -> str:
    """Return ``definition`` with every date, time, timestamp, uuid and md5 literal masked.

    Two definitions equal after this differ only by values frozen at creation (``'now'::timestamp``
    in a view, ``DEFAULT 'now'``): running the same SQL again gives another value, not another schema.
    """
    return _FROZEN.sub("'<frozen>'", definition)


def _candidates(a: Snapshot, b: Snapshot) -> Iterable[Key]:
    """The objects that can differ: all, or for snapshots taken one from the other (take(previous=...)),
    only those of groups that were read again in between (the others are the same objects)."""
    if (
        not a._groups
        or not b._groups
        or any(len(s.objects) != sum(map(len, s._groups.values())) for s in (a, b))
    ):
        return a.objects.keys() | b.objects.keys()  # an object in two groups: compare them all
    keys: set[Key] = set()
    for g in a._groups.keys() | b._groups.keys():
        in_a, in_b = a._groups.get(g), b._groups.get(g)
        if in_a is not in_b:
            keys.update(in_a or ())
            keys.update(in_b or ())
    if len(keys) > len(a.objects) // 2:
        return a.objects.keys() | b.objects.keys()
    return keys


def digest(snapshot: Snapshot) -> str:
    """Return a stable sha256 of the snapshot (objects, and row counts when taken)."""
    canonical = {
        "objects": sorted([kind, name, definition] for (kind, name), definition in snapshot.objects.items()),
        "rows": sorted(snapshot.rows.items()) if snapshot.rows is not None else None,
    }
    text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
