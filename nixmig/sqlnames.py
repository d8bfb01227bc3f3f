"""The one way a name or a value enters SQL that nixmig writes.

Every identifier (schema, table, index, database, role) and every value that nixmig puts
into a statement of its own goes through this module, which renders it with
``psycopg.sql.Identifier`` / ``psycopg.sql.Literal``: an identifier is always double-quoted
with any ``"`` inside doubled, a string is always a single-quoted literal (``E'...'`` when it
holds a backslash). Queries that need no single query string use parameters instead.

Rendering needs no connection: psycopg quotes for UTF-8 with standard-conforming strings,
which is what every PostgreSQL that nixmig supports uses for its own connections.

Schema names come from outside nixmig's trust (``--schema``, ``--schemas-from`` query
results, targets files, ``NIXMIG['TARGETS']``); ``schema_problem`` says why one can't be used,
and every path that takes one refuses it with that reason before anything runs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from psycopg import sql

from .exceptions import UnsafeName

MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names


def ident(*parts: str) -> str:
    """Return ``parts`` as one quoted, dot-joined identifier: ident('s', 't') -> '"s"."t"'."""
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise UnsafeName(f"{part!r} is not a usable SQL name: it is empty or holds a NUL character.")
    return sql.Identifier(*parts).as_string(None)


def literal(value: object) -> str:
    """Return ``value`` as an SQL literal (None -> NULL; a str -> '...'; a list -> an array literal)."""
    if isinstance(value, str) and "\x00" in value:
        raise UnsafeName(f"{value!r} can't be an SQL string: PostgreSQL text can't hold a NUL character.")
    return sql.Literal(value).as_string(None)


def split_table(name: str) -> tuple[str, ...]:
    """Return ``'table'`` or ``'schema.table'`` as its parts, or raise UnsafeName."""
    parts = tuple(name.split(".")) if isinstance(name, str) else ()
    if not parts or not all(parts) or len(parts) > 2 or any(control_characters(p) for p in parts):
        raise UnsafeName(
            f"{name!r} is not a table name; use 'migrations' or 'schema.migrations' (no control characters)."
        )
    return parts


def table(name: str, suffix: str = "") -> str:
    """Return a quoted ``table`` or ``schema.table``, with ``suffix`` added to the table's own name."""
    parts = split_table(name)
    return ident(*parts[:-1], parts[-1] + suffix)


def control_characters(text: str) -> list[str]:
    """Return the control and format characters of ``text`` (line breaks, NUL, bidi marks, ...)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def schema_problem(name: str) -> str:
    """Return why ``name`` can't be the schema of a target ('' when it can).

    Any other character is fine: the name is always quoted. Refused: empty names, names
    with a '.' (the tracking table is '<schema>.<table>' and a dotted name would read as two),
    control or invisible format characters (they would hide in output and break targets-file
    lines), names PostgreSQL would truncate, and the reserved ``pg_`` prefix.
    """
    if not name:
        return "is empty"
    if control_characters(name):
        return "contains a control character (e.g. a NUL, a line break or a tab)"
    if name != name.strip():
        return "starts or ends with white space"
    if "." in name:
        return "contains a '.'"
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        return f"is longer than {MAX_IDENTIFIER_BYTES} bytes"
    if name.lower().startswith("pg_"):
        return "starts with 'pg_', which PostgreSQL reserves for its own schemas"
    return ""


def check_schema(name: object, where: str) -> str:
    """Return ``name`` when it can be a target's schema, else raise UnsafeName naming ``where``."""
    if not isinstance(name, str):
        raise UnsafeName(f"{where}: the schema name {name!r} is not a string; give schema names as text.")
    problem = schema_problem(name)
    if problem:
        raise UnsafeName(
            f"{where}: the schema name {name!r} {problem}; nothing was run. nixmig keeps each schema's "
            "tracking table as <schema>.<table>, so use a plain name (e.g. tenant_0001)."
        )
    return name


def search_path(schema: str) -> str:
    """Return the search_path value of a schema target: its schema, then public (shared objects)."""
    return f"{ident(schema)}, public"


def values(rows: Iterable[Iterable[object]]) -> str:
    """Return rows as the body of a VALUES list: (1, 'a'), (2, 'b')."""
    return ", ".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows)
