"""A small SQL highlighter for the admin: escaped HTML with spans for keywords, strings, comments, numbers.

Good enough to read a migration at a glance, and no dependency. Dollar-quote markers
are marked but their bodies are highlighted as SQL too (they are mostly PL/pgSQL).
"""

from __future__ import annotations

import re

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

KEYWORDS = frozenset(
    [
        "ADD",
        "ALL",
        "ALTER",
        "AND",
        "AS",
        "ASC",
        "BEGIN",
        "BETWEEN",
        "BY",
        "CASCADE",
        "CASE",
        "CHECK",
        "COLUMN",
        "COMMENT",
        "COMMIT",
        "CONCURRENTLY",
        "CONSTRAINT",
        "CREATE",
        "DECLARE",
        "DEFAULT",
        "DELETE",
        "DESC",
        "DISTINCT",
        "DO",
        "DROP",
        "EACH",
        "ELSE",
        "ELSIF",
        "END",
        "ENUM",
        "EXCEPTION",
        "EXECUTE",
        "EXISTS",
        "EXTENSION",
        "FOR",
        "FOREIGN",
        "FROM",
        "FUNCTION",
        "GRANT",
        "GROUP",
        "HAVING",
        "IF",
        "IN",
        "INDEX",
        "INSERT",
        "INTO",
        "IS",
        "JOIN",
        "KEY",
        "LANGUAGE",
        "LEFT",
        "LIKE",
        "LIMIT",
        "LOOP",
        "NEW",
        "NOT",
        "NOTHING",
        "NULL",
        "OF",
        "OLD",
        "ON",
        "OR",
        "ORDER",
        "OUTER",
        "PERFORM",
        "PRIMARY",
        "PROCEDURE",
        "RAISE",
        "REFERENCES",
        "RENAME",
        "REPLACE",
        "RESTRICT",
        "RETURN",
        "RETURNS",
        "REVOKE",
        "ROLLBACK",
        "ROW",
        "SCHEMA",
        "SELECT",
        "SEQUENCE",
        "SET",
        "TABLE",
        "THEN",
        "TO",
        "TRIGGER",
        "TRUNCATE",
        "TYPE",
        "UNIQUE",
        "UPDATE",
        "USING",
        "VALUES",
        "VIEW",
        "WHEN",
        "WHERE",
        "WITH",
    ]
)

TOKEN_RE = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>[EeBbXxNn]?'(?:[^']|'')*(?:'|\Z))
  | (?P<ident>"(?:[^"]|"")*(?:"|\Z))
  | (?P<dollar>\$[A-Za-z_]*\$)
  | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)
  | (?P<number>\b[0-9]+(?:\.[0-9]+)?\b)
""",
    re.VERBOSE | re.DOTALL,
)

CLASSES = {"comment": "sql-comment", "string": "sql-string", "dollar": "sql-string", "number": "sql-number"}


def highlight_sql(text: str) -> SafeString:
    """Return ``text`` as escaped HTML with highlighting spans."""
    parts: list[str] = []
    position = 0
    for match in TOKEN_RE.finditer(text):
        parts.append(escape(text[position : match.start()]))
        kind, value = match.lastgroup, match.group()
        css = CLASSES.get(kind or "")
        if kind == "word" and value.upper() in KEYWORDS:
            css = "sql-keyword"
        parts.append(f'<span class="{css}">{escape(value)}</span>' if css else escape(value))
        position = match.end()
    parts.append(escape(text[position:]))
    return mark_safe("".join(parts))
