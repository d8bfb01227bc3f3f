"""Lint SQL migrations for statements that lock, rewrite or break a running production database.

Rules run on PostgreSQL's own parse trees (pglast's JSON output: the AST objects cost ten times
more) of each statement, with the context the runner has: which tables the plan creates (new
tables are empty, so locks on them don't matter), each file's transaction mode, the server
version, and, with a database, how big each table is (one query). Findings are suppressed next
to their statement with ``-- nixmig:allow rule-id: reason``; ``NIXMIG['LINT']`` sets levels.

The core (``lint_files``) is pure: no database and no Django settings unless asked for them.
pglast is imported only when a file is actually linted, so ``sqlmigrate_status`` with nothing
pending never pays for it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import overload

from .exceptions import DatabaseUnavailable, LintError, NixmigError
from .sqlnames import ident
from .tree import SqlFile, Tree, line_of

ERROR, WARNING, INFO, OFF = "error", "warning", "info", "off"
LEVELS = (ERROR, WARNING, INFO, OFF)
ORDER = {ERROR: 0, WARNING: 1, INFO: 2}
DEFAULT_SMALL_TABLE_ROWS = 10_000
DEFAULT_PG_VERSION = 14  # without --pg-version or a server: the oldest PostgreSQL still supported

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
LOCK_MODES = {
    1: "ACCESS SHARE",
    2: "ROW SHARE",
    3: "ROW EXCLUSIVE",
    4: "SHARE UPDATE EXCLUSIVE",
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: ACCESS_EXCLUSIVE,
}


@dataclass(frozen=True)
class Rule:
    """One lint rule: its id, default level, group and one-line summary."""

    id: str
    level: str
    group: str  # locks, breaking, robustness, types, lint
    summary: str

    @property
    def downgrades_on_small_tables(self) -> bool:
        return self.group == "locks" or self.id == "missing-lock-timeout"

    @property
    def needs_rows(self) -> bool:
        """True when the hazard needs rows in the table: such findings don't fire on an empty one."""
        return self.downgrades_on_small_tables or self.id == "add-column-not-null-without-default"


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "create-index-not-concurrently",
            ERROR,
            "locks",
            "CREATE INDEX without CONCURRENTLY on an existing table blocks its writes for the whole build",
        ),
        Rule(
            "drop-index-not-concurrently",
            ERROR,
            "locks",
            "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the index's table",
        ),
        Rule(
            "reindex-not-concurrently",
            ERROR,
            "locks",
            "REINDEX without CONCURRENTLY blocks writes to the table and reads through the index",
        ),
        Rule(
            "concurrently-in-transaction",
            ERROR,
            "locks",
            "CONCURRENTLY in a transactional file can't run: PostgreSQL refuses it inside a transaction",
        ),
        Rule(
            "add-constraint-without-not-valid",
            ERROR,
            "locks",
            "ADD FOREIGN KEY or CHECK without NOT VALID scans the whole table under a lock",
        ),
        Rule(
            "validate-in-same-transaction",
            ERROR,
            "locks",
            "VALIDATE CONSTRAINT in the transaction that added it keeps the ADD's lock during the scan",
        ),
        Rule(
            "set-not-null",
            ERROR,
            "locks",
            "SET NOT NULL without a validated CHECK (col IS NOT NULL) scans the table under ACCESS EXCLUSIVE",
        ),
        Rule(
            "add-column-not-null-without-default",
            ERROR,
            "breaking",
            "ADD COLUMN ... NOT NULL without a DEFAULT fails on any table that has rows",
        ),
        Rule(
            "add-column-volatile-default",
            ERROR,
            "locks",
            "ADD COLUMN with a volatile default (or any default before PostgreSQL 11) rewrites the table",
        ),
        Rule(
            "alter-column-type",
            ERROR,
            "locks",
            "ALTER COLUMN TYPE rewrites the table and its indexes, except binary-compatible changes",
        ),
        Rule(
            "add-unique-without-using-index",
            ERROR,
            "locks",
            "ADD UNIQUE / PRIMARY KEY without USING INDEX builds the index under ACCESS EXCLUSIVE",
        ),
        Rule(
            "add-serial-or-identity-column",
            ERROR,
            "locks",
            "ADD COLUMN serial / identity (e.g. a new primary key) rewrites the table",
        ),
        Rule("vacuum-full", ERROR, "locks", "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"),
        Rule("cluster", ERROR, "locks", "CLUSTER rewrites the table under ACCESS EXCLUSIVE"),
        Rule("lock-table", WARNING, "locks", "LOCK TABLE holds a lock until the migration commits"),
        Rule(
            "drop-table", ERROR, "breaking", "DROP TABLE breaks the running code that still reads the table"
        ),
        Rule(
            "drop-column", ERROR, "breaking", "DROP COLUMN breaks the running code that still uses the column"
        ),
        Rule(
            "rename-table", ERROR, "breaking", "RENAME TABLE breaks the running code that uses the old name"
        ),
        Rule(
            "rename-column", ERROR, "breaking", "RENAME COLUMN breaks the running code that uses the old name"
        ),
        Rule(
            "drop-not-null",
            WARNING,
            "breaking",
            "DROP NOT NULL lets NULLs in that running code may not expect",
        ),
        Rule(
            "truncate-cascade",
            ERROR,
            "breaking",
            "TRUNCATE ... CASCADE empties every table that references it",
        ),
        Rule(
            "missing-lock-timeout",
            WARNING,
            "robustness",
            "An ACCESS EXCLUSIVE lock without lock_timeout queues every query of the table behind it",
        ),
        Rule(
            "transaction-control",
            WARNING,
            "robustness",
            "BEGIN / COMMIT / ROLLBACK / SAVEPOINT inside a migration file fights the runner's transaction",
        ),
        Rule(
            "identifier-too-long",
            WARNING,
            "robustness",
            "Identifiers over 63 bytes are silently truncated by PostgreSQL",
        ),
        Rule(
            "create-without-if-not-exists",
            WARNING,
            "robustness",
            "CREATE TABLE / INDEX without IF NOT EXISTS in a no-transaction file can't be re-run",
        ),
        Rule(
            "unnamed-concurrent-index",
            WARNING,
            "robustness",
            "CREATE INDEX CONCURRENTLY without a name: a resume can't find the index an interrupted run left",
        ),
        Rule("prefer-bigint", OFF, "types", "integer / smallint columns overflow; prefer bigint"),
        Rule("prefer-identity", OFF, "types", "serial columns: prefer GENERATED ... AS IDENTITY"),
        Rule(
            "prefer-text", OFF, "types", "varchar(n) / char(n): prefer text (with a CHECK if a limit matters)"
        ),
        Rule("prefer-timestamptz", OFF, "types", "timestamp without time zone: prefer timestamptz"),
        Rule("bad-allow", ERROR, "lint", "A '-- nixmig:allow' comment without a known rule id and a reason"),
        Rule("unused-allow", WARNING, "lint", "A '-- nixmig:allow' comment that suppresses nothing"),
        Rule("unparsed-statement", WARNING, "lint", "A statement pglast can't parse was not linted"),
    )
}


TYPE_RULES = tuple(rid for rid, r in RULES.items() if r.group == "types")


@dataclass(frozen=True)
class Finding:
    """One problem found in one statement."""

    rule: str
    level: str
    file: str  # the file's path relative to the migrations directory
    line: int
    column: int
    statement: str  # the statement's first line
    message: str  # what the statement does and why that matters
    fix: str  # the safe way to write it
    table: str | None = None
    lock: str | None = None  # e.g. "ACCESS EXCLUSIVE"
    effect: str | None = None  # "rewrites", "scans", "builds an index", "breaks running code", ...
    migration: str | None = None
    path: str | None = field(default=None, compare=False)  # the file on disk, for CI annotations
    statement_index: int = field(default=0, compare=False, repr=False)
    certain: bool = field(default=False, compare=False)  # its object is one the live catalog shows
    rows: float | None = field(default=None, compare=False, repr=False)  # the catalog's row estimate
    empty: bool = field(default=False, compare=False, repr=False)  # the catalog shows no page at all

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "level": self.level,
            "migration": self.migration,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "statement": self.statement,
            "table": self.table,
            "lock": self.lock,
            "effect": self.effect,
            "message": self.message,
            "fix": self.fix,
        }

    def lock_text(self) -> str:
        """Return e.g. 'ACCESS EXCLUSIVE lock on users, rewrites it'."""
        parts = []
        if self.lock:
            parts.append(f"{self.lock} lock on {self.table or 'the table'}")
        if self.effect:
            parts.append(self.effect)
        return ", ".join(parts)


@dataclass
class Report:
    """The findings of one lint run, in file and line order."""

    findings: list[Finding]
    files: int = 0
    pg_version: int | None = None
    sized: bool = False  # table sizes were read from a database
    mode: str = ""  # what was linted as what, e.g. "one plan over the database's catalog"

    def counts(self) -> dict[str, int]:
        counts = {ERROR: 0, WARNING: 0, INFO: 0}
        for f in self.findings:
            counts[f.level] += 1
        return counts

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{len(self.findings)} finding(s) in {self.files} file(s): {c[ERROR]} error(s), "
            f"{c[WARNING]} warning(s), {c[INFO]} info"
        )

    def as_dict(self) -> dict:
        return {
            "findings": [f.as_dict() for f in self.findings],
            "summary": self.counts(),
            "files": self.files,
            "pg_version": self.pg_version,
            "mode": self.mode,
        }

    def raise_for_errors(self) -> None:
        """Raise LintError listing every error finding, if there is any."""
        errors = self.errors
        if errors:
            lines = "\n".join(f"  - {render(f)}" for f in errors)
            raise LintError(
                f"Nothing was run: lint found {len(errors)} error(s) in the migrations of this run:\n{lines}\n"
                "Rewrite them as each fix says, suppress one next to its statement with "
                "'-- nixmig:allow rule-id: reason', or run with --no-lint (sqlmigrate_lint shows them again)."
            )


def render(f: Finding) -> str:
    """Return one finding as a paragraph: where, what, why, and the fix."""
    lock = f.lock_text()
    return (
        f"{f.file}:{f.line}:{f.column}: {f.level} [{f.rule}] {f.statement}\n"
        f"      {lock + ': ' if lock else ''}{f.message}\n      Fix: {f.fix}"
    )


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Levels per rule, the small-table threshold, and whether nixmig itself sets lock_timeout."""

    levels: dict[str, str]
    small_table_rows: int = DEFAULT_SMALL_TABLE_ROWS
    runner_lock_timeout: bool = True

    @classmethod
    def default(cls) -> Settings:
        return cls({rid: r.level for rid, r in RULES.items()})

    @classmethod
    def from_django(cls) -> Settings:
        """Read NIXMIG['LINT'], NIXMIG['LINT_SMALL_TABLE_ROWS'] and NIXMIG['LOCK_TIMEOUT']."""
        from django.conf import settings

        from . import conf

        nixmig = getattr(settings, "NIXMIG", {})
        return cls.build(
            nixmig.get("LINT"),
            nixmig.get("LINT_SMALL_TABLE_ROWS", DEFAULT_SMALL_TABLE_ROWS),
            conf.get("LOCK_TIMEOUT"),
        )

    @classmethod
    def build(cls, overrides, small_rows=DEFAULT_SMALL_TABLE_ROWS, lock_timeout="10s") -> Settings:
        levels = {rid: r.level for rid, r in RULES.items()}
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise NixmigError(
                f"NIXMIG['LINT'] must be a dict of rule id to level, e.g. "
                f"{{'drop-column': 'warning', 'prefer-bigint': 'info'}}; it is {overrides!r}."
            )
        for rid, level in overrides.items():
            if rid not in RULES:
                raise NixmigError(
                    f"NIXMIG['LINT'] names the unknown rule {rid!r}; the rules are listed by "
                    "'python manage.py sqlmigrate_lint --rules' and in docs/lint.md."
                )
            if level not in LEVELS:
                raise NixmigError(
                    f"NIXMIG['LINT'][{rid!r}] = {level!r} is not a level; use one of {', '.join(LEVELS)}."
                )
            levels[rid] = level
        try:
            small = int(small_rows)
        except (TypeError, ValueError):
            raise NixmigError(
                f"NIXMIG['LINT_SMALL_TABLE_ROWS'] = {small_rows!r} is not a number of rows."
            ) from None
        timeout = str(lock_timeout or "0").strip()
        return cls(levels, small, not _is_zero(timeout))


def _is_zero(value: str) -> bool:
    return bool(re.match(r"^0+\s*[a-z]*$", value.strip().lower())) or not value.strip()


# -- reading statements ----------------------------------------------------------------------------

# Statements worth parsing: everything else (INSERT, CREATE FUNCTION with its body, COMMENT, ...) is
# skipped unless the file has a long identifier. Parsing only these keeps linting cheap.
_INTERESTING = re.compile(
    r"(?:ALTER|DROP|REINDEX|VACUUM|CLUSTER|LOCK|TRUNCATE|BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|"
    r"RELEASE|PREPARE|SET|CREATE(?!\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE|TRIGGER|CONSTRAINT\s+TRIGGER|"
    r"VIEW|RULE|POLICY|AGGREGATE)\b))\b",
    re.IGNORECASE,
)
_LONG_WORD = re.compile(r'[\w$]{64,}|"[^"\n]{64,}"')


def _has_long_word(text: str) -> bool:
    """True when the text may hold an identifier over 63 bytes (a cheap test first, then the pattern)."""
    return max(map(len, text.split()), default=0) > 63 and bool(_LONG_WORD.search(text))


_ALLOW = re.compile(r"--[ \t]*nixmig:[ \t]*allow\b[ \t]*([^\n]*)")
_ALLOW_BODY = re.compile(r"^([A-Za-z0-9_-]+)[ \t]*(?::[ \t]*(.*?))?[ \t]*$")


@dataclass(slots=True)
class Stmt:
    start: int  # character offset of the first token
    end: int
    line: int
    column: int
    text: str = field(repr=False, default="")  # the whole file's text
    kind: str | None = None  # parse node name; None when not parsed
    node: dict | None = None
    parse_error: str | None = None

    @property
    def first_line(self) -> str:
        """Return the statement's first line, shortened, with ' ...' when more lines follow."""
        text, start, end = self.text, self.start, self.end
        nl = text.find("\n", start, end)
        first = text[start : nl if nl != -1 else end].rstrip()
        if len(first) > 100:
            return first[:97] + "..."
        return first + " ..." if nl != -1 else first


# Space and comments before a statement's first token (the scanner's slices include them).
_LEAD = re.compile(r"(?:\s+|--[^\n]*|/\*(?:[^*]|\*(?!/))*\*/)*")


def _spans(text: str) -> list[tuple[int, int]]:
    """Return (start, end) character offsets of each statement's first token and end."""
    from pglast import parser

    if "atomic" in text.lower():  # BEGIN ATOMIC bodies: only the parser splits them right
        from .sqltext import analyze

        return [(s.start, s.end) for s in analyze(text).statements]
    try:
        slices = parser.split(text, with_parser=False, only_slices=True)
    except parser.ParseError:
        return []  # even the scanner fails (an open quote): the run refuses the file anyway
    if text.isascii():
        pairs = [(s.start, s.stop) for s in slices]
    else:
        data = text.encode("utf-8")
        pairs = [
            (len(data[: s.start].decode("utf-8", "replace")), len(data[: s.stop].decode("utf-8", "replace")))
            for s in slices
        ]
    out = []
    for a, b in pairs:
        lead = _LEAD.match(text, a)
        assert lead is not None, "_LEAD matches the empty string too"
        start = lead.end()
        if text.startswith("*/", start):  # a nested /* /* */ */ comment: PostgreSQL's rules
            from .sqltext import _skip_space_and_comments

            start = _skip_space_and_comments(text, a, b)
        out.append((min(start, b), b))
    return out


def statements(text: str) -> list[Stmt]:
    """Split a file into statements (each is parsed later, only when a rule looks at it)."""
    out = []
    line, pos = 1, 0
    for start, end in _spans(text):
        line += text.count("\n", pos, start)  # spans are in order: count each line once
        pos = start
        out.append(Stmt(start, end, line, start - text.rfind("\n", 0, start), text))
    return out


def parse(sql: str) -> tuple[str | None, dict | None, str | None]:
    """Return (node name, node, parse error) of one statement, from pglast's JSON parse tree."""
    from pglast import parser

    try:
        stmts = json.loads(parser.parse_sql_json(sql)).get("stmts", [])
    except parser.ParseError as exc:
        return None, None, str(exc)
    if not stmts:
        return None, None, None
    ((kind, node),) = stmts[0]["stmt"].items()
    return kind, node, None


# Fast paths for the two statements nearly every migration has: a plain CREATE TABLE name (...) and a
# CREATE INDEX on a table that is new in the plan. Either says all the rules need without building a
# parse tree; anything else (or anything these don't match exactly) goes to pglast.
# (?-i:...): under IGNORECASE, re would case-fold all of \x80-\uffff at compile time (60 ms per process,
# which every command paid); the class holds both cases already, so matching is the same.
_IDENT = r'(?:"(?:[^"]|"")+"|(?-i:[A-Za-z_\x80-\uffff])[\w$]*)'
_QNAME = rf"({_IDENT})(?:\s*\.\s*({_IDENT}))?"


_FAST = {
    "table": rf"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?{_QNAME}\s*\(",
    "index": rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:(?!ON\b){_IDENT}\s+)?ON\s+(?:ONLY\s+)?{_QNAME}[\s(]",
    "index_name": rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?!ON\b)({_IDENT})\s+ON\b",
}


@functools.cache
def _fast(which: str) -> re.Pattern:
    """A fast-path pattern, compiled on first use (20 ms that every process importing lint paid)."""
    return re.compile(_FAST[which], re.IGNORECASE)


@overload
def _fold(ident: str) -> str: ...
@overload
def _fold(ident: None) -> None: ...
def _fold(ident: str | None) -> str | None:
    """Return an identifier as PostgreSQL stores it: unquoted ones folded to lower case."""
    if ident is None:
        return None
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def _fast_rel(m: re.Match, first: int) -> Rel:
    a, b = _fold(m.group(first)), _fold(m.group(first + 1))
    return Rel(a, b) if b is not None else Rel(None, a)


# -- names -----------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return ident(name)


@dataclass(frozen=True)
class Rel:
    schema: str | None
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema or "public", self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def quoted(self) -> str:
        return ".".join(_quote(p) for p in (self.schema, self.name) if p)


def _rangevar(node: dict | None) -> Rel | None:
    if not node:
        return None
    node = node.get("RangeVar", node)
    return Rel(node.get("schemaname"), node.get("relname", "")) if node.get("relname") else None


def _names(node: dict) -> list[str]:
    """Return the strings of a List / list of String nodes (a qualified name)."""
    items = node.get("List", {}).get("items", []) if isinstance(node, dict) else node
    return [i["String"]["sval"] for i in items if isinstance(i, dict) and "String" in i]


def _qualified(parts: list[str]) -> Rel | None:
    if not parts:
        return None
    return Rel(parts[-2] if len(parts) > 1 else None, parts[-1])


def _type_of(type_name: dict) -> tuple[str, tuple[int, ...]]:
    """Return (type name without pg_catalog, typmods) of a TypeName node."""
    names = [n for n in _names(type_name.get("names", [])) if n != "pg_catalog"]
    mods = []
    for m in type_name.get("typmods", []):
        ival = m.get("A_Const", {}).get("ival")
        if isinstance(ival, dict):
            mods.append(int(ival.get("ival", 0)))
    if type_name.get("arrayBounds"):
        return (".".join(names) + "[]", tuple(mods))
    return (".".join(names), tuple(mods))


_ALIASES = {
    "int": "int4",
    "integer": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "serial4": "serial",
    "serial8": "bigserial",
    "serial2": "smallserial",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "bit varying": "varbit",
}


def _parse_format_type(text: str) -> tuple[str, tuple[int, ...]]:
    """Turn format_type() output such as 'character varying(20)' into ('varchar', (20,))."""
    m = re.match(r"^(.*?)(?:\((\d+)(?:,(\d+))?\))?(\[\])?$", text.strip())
    assert m is not None, f"format_type() output is one line: {text!r}"
    name = _ALIASES.get(m.group(1).strip(), m.group(1).strip())
    mods = tuple(int(g) for g in (m.group(2), m.group(3)) if g is not None)
    return (name + (m.group(4) or ""), mods)


def _binary_compatible(old: tuple[str, tuple], new: tuple[str, tuple]) -> bool:
    """True when changing a column from ``old`` to ``new`` needs no table rewrite."""
    (o, om), (n, nm) = old, new
    o, n = _ALIASES.get(o, o), _ALIASES.get(n, n)
    if (o, om) == (n, nm):
        return True
    if o in ("varchar", "text") and n == "text":
        return True
    if o == "varchar" and n == "varchar":
        return not nm or (bool(om) and nm[0] >= om[0])
    if o == "numeric" and n == "numeric":
        if not nm:
            return True
        return bool(om) and len(om) == 2 and len(nm) == 2 and nm[1] == om[1] and nm[0] >= om[0]
    if o == "varbit" and n == "varbit":
        return not nm or (bool(om) and nm[0] >= om[0])
    if o == n and o in ("timestamp", "timestamptz", "time", "timetz", "interval"):
        return not nm or (bool(om) and nm[0] >= om[0])  # more fractional digits: no rewrite
    return o == "cidr" and n == "inet"


_VOLATILE = {
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
    "setseed",
    "gen_salt",
    "gen_random_bytes",
}
_SERIAL = {"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"}


def _volatile_call(node) -> str | None:
    """Return the name of a known volatile function called anywhere in an expression."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            call = item.get("FuncCall")
            if call is not None:
                name = _names(call.get("funcname", []))
                if name and name[-1].lower() in _VOLATILE:
                    return name[-1]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _long_identifiers(sql: str) -> list[str]:
    """Return identifiers over 63 bytes in a statement (PostgreSQL's scanner truncates them before parsing)."""
    from pglast import parser

    if not _LONG_WORD.search(sql):
        return []
    data = sql.encode("utf-8")
    found = []
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return []
    for tok in tokens:
        if tok.name == "IDENT":
            word = data[tok.start : tok.end + 1]
            if word.startswith(b'"'):
                word = word[1:-1].replace(b'""', b'"')
            if len(word) > 63:
                found.append(word.decode("utf-8", "replace"))
    return found


# -- the rules -------------------------------------------------------------------------------------

# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE.
_WEAKER = {
    "AT_ValidateConstraint": "SHARE UPDATE EXCLUSIVE",
    "AT_SetStatistics": "SHARE UPDATE EXCLUSIVE",
    "AT_SetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_SetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetRelOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ClusterOn": "SHARE UPDATE EXCLUSIVE",
    "AT_DropCluster": "SHARE UPDATE EXCLUSIVE",
    "AT_AttachPartition": "SHARE UPDATE EXCLUSIVE",
    "AT_EnableTrig": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigUser": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigUser": "SHARE ROW EXCLUSIVE",
}

NO_TX_FILE = "a migration of its own whose first line is '-- nixmig:no-transaction'"


# -- the schema model ------------------------------------------------------------------------------
# The linter follows each statement's effect on tables, columns, indexes and constraints, starting from
# the live catalog (with a database) or from empty. Objects carry the epoch that created them: one plan
# is one epoch (``--all`` makes each file its own), and what existed before the plan has BEFORE. Rules
# read the model; they never change it.

BEFORE = -1


@dataclass(slots=True)
class Column:
    type: tuple | dict | None  # (name, typmods), a TypeName node not read yet, or None when not known
    born: int = BEFORE


@dataclass(slots=True)
class Table:
    schema: str
    name: str
    born: int = BEFORE  # the epoch that created it; BEFORE: it existed before the plan
    certain: bool = False  # read from the live catalog, not assumed
    columns: dict = field(default_factory=dict)  # column name -> Column
    complete: bool = True  # every column is known (a CREATE TABLE that was read, or the catalog)
    rows: float | None = None  # pg_class.reltuples, from the catalog
    empty: bool = False  # the catalog shows the table has no page at all
    unread: str | None = None  # a CREATE TABLE the fast path did not parse yet

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)


@dataclass(slots=True)
class Index:
    table: tuple | None  # key of its table, None when not known
    born: int = BEFORE
    certain: bool = False


@dataclass(frozen=True)
class CatalogTable:
    """A table as the live catalog shows it before the plan."""

    schema: str
    name: str
    rows: float | None
    empty: bool
    columns: dict  # column name -> format_type() text
    indexes: tuple  # names of its indexes (constraint indexes included)
    not_null_checked: frozenset  # columns with a validated CHECK (col IS NOT NULL)


@dataclass(frozen=True)
class Catalog:
    """What the live database holds before the plan: its tables, and the search_path names resolve in."""

    search_path: tuple
    tables: tuple


class Schema:
    """The linter's model of the database: what existed before the plan, and what each statement did."""

    def __init__(self, catalog: Catalog | None = None):
        self.epoch = 0
        self.from_catalog = catalog is not None
        self.search_path: list[str] = (
            list(catalog.search_path) if catalog and catalog.search_path else ["public"]
        )
        self.tables: dict[tuple[str, str], Table] = {}
        self.indexes: dict[tuple[str, str], Index] = {}  # (schema, index name) -> Index
        self.not_null_checks: dict = {}  # (table key, constraint) -> column
        self.proven_not_null: dict = {}  # (table key, column) -> transaction number
        for ct in catalog.tables if catalog else ():
            t = Table(ct.schema, ct.name, BEFORE, True, rows=ct.rows, empty=ct.empty)
            t.columns = {name: Column(_parse_format_type(typ)) for name, typ in ct.columns.items()}
            self.tables[t.key] = t
            for name in ct.indexes:
                self.indexes[(ct.schema, name)] = Index(t.key, BEFORE, True)
            for col in ct.not_null_checked:
                self.proven_not_null[(t.key, col)] = (-1, -1)

    def next_epoch(self) -> None:
        """Start a new plan: everything the model holds now counts as deployed."""
        self.epoch += 1

    def is_new(self, obj: Table | Index | Column | None) -> bool:
        """True for an object created (or added) in the current plan."""
        return obj is not None and obj.born == self.epoch

    def _find(self, rel: Rel, space: dict) -> tuple[str, str] | None:
        if rel.schema:
            return (rel.schema, rel.name) if (rel.schema, rel.name) in space else None
        for schema in self.search_path:
            if (schema, rel.name) in space:
                return (schema, rel.name)
        return None

    def _home(self, rel: Rel) -> tuple[str, str]:
        return (rel.schema or self.search_path[0], rel.name)

    # tables --------------------------------------------------------------------------------------

    def table(self, rel: Rel | None, *, if_exists: bool = False) -> Table | None:
        """Return the table ``rel`` names before this statement, or None when it does not exist.

        A table the model has not seen is one the catalog does not have (so the plan made it in a way
        the model can't follow, e.g. dynamic SQL: it is not one that existed before), or without a
        catalog one assumed deployed, unless ``IF EXISTS`` says it may be missing.
        """
        if rel is None:
            return None
        key = self._find(rel, self.tables)
        if key is not None:
            return self.tables[key]
        if self.from_catalog or if_exists:
            return None
        t = Table(*self._home(rel), complete=False)
        self.tables[t.key] = t
        return t

    def create_table(self, rel: Rel, *, if_not_exists: bool = False) -> Table | None:
        """Add a table created by the plan; None when IF NOT EXISTS finds it already there."""
        if if_not_exists and self._find(rel, self.tables) is not None:
            return None
        t = Table(*self._home(rel), born=self.epoch)
        self.tables[t.key] = t
        return t

    def learn_table(self, t: Table, node: dict) -> None:
        """Remember the columns of a CREATE TABLE, their types, NOT NULL and the indexes of its constraints."""
        t.unread = None
        if node.get("inhRelations") or node.get("partbound") or node.get("ofTypename"):
            t.complete = False
        for elt in node.get("tableElts", []):
            col = elt.get("ColumnDef")
            if col:
                name = col.get("colname")
                t.columns[name] = Column(col.get("typeName", {}), t.born)  # a TypeName node: read when needed
                for c in col.get("constraints", []):
                    con = c.get("Constraint", {})
                    if con.get("contype") == "CONSTR_NOTNULL":
                        self.proven_not_null[(t.key, name)] = (-1, -1)
                    self.constraint_index(t, con, [name])
            elif "TableLikeClause" in elt:
                t.complete = False
            elif "Constraint" in elt:
                con = elt["Constraint"]
                self.constraint_index(t, con, [k.get("String", {}).get("sval") for k in con.get("keys", [])])

    def constraint_index(self, t: Table, con: dict, columns: list) -> None:
        """Add the index a PRIMARY KEY / UNIQUE / EXCLUDE constraint builds, under the name PostgreSQL gives it."""
        contype = con.get("contype")
        if contype not in ("CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_EXCLUSION"):
            return
        index_name = con.get("indexname")
        if index_name and (t.schema, index_name) in self.indexes:
            # USING INDEX: the index becomes the constraint's
            self.indexes[(t.schema, index_name)].table = t.key
            return
        name = index_name or con.get("conname")
        if not name:
            if contype == "CONSTR_PRIMARY":
                name = f"{t.name}_pkey"
            elif contype == "CONSTR_UNIQUE" and all(columns):
                name = "_".join([t.name, *columns, "key"])
            else:
                return
        self.indexes[(t.schema, name[:63])] = Index(t.key, self.epoch)

    def read(self, t: Table) -> None:
        """Parse a CREATE TABLE the fast path skipped, now that a later statement needs its columns."""
        if t.unread is None:
            return
        kind, node, _ = parse(t.unread)
        t.unread = None
        if kind == "CreateStmt" and node is not None:  # a node whenever a kind
            self.learn_table(t, node)

    def rename_table(self, t: Table, schema: str | None = None, name: str | None = None) -> None:
        """Move a table (with its columns, indexes and constraints) to a new name or schema."""
        old = t.key
        del self.tables[old]
        t.schema, t.name = schema or t.schema, name or t.name
        self.tables[t.key] = t
        for ix in self.indexes.values():
            if ix.table == old:
                ix.table = t.key
        for facts in (self.not_null_checks, self.proven_not_null):
            for k in [k for k in facts if k[0] == old]:
                facts[(t.key, k[1])] = facts.pop(k)

    def drop_table(self, t: Table) -> None:
        """Forget a dropped table and its indexes."""
        self.tables.pop(t.key, None)
        for k in [k for k, ix in self.indexes.items() if ix.table == t.key]:
            del self.indexes[k]

    # columns -------------------------------------------------------------------------------------

    def column(self, t: Table, name: str | None, *, if_exists: bool = False) -> Column | None:
        """Return a column of ``t`` before this statement, or None when it does not exist."""
        self.read(t)
        col = t.columns.get(name)
        if col is not None or t.complete or if_exists or name is None:
            return col
        col = t.columns[name] = Column(None)  # a column of a table the model does not fully know
        return col

    # indexes -------------------------------------------------------------------------------------

    def index(self, rel: Rel, *, if_exists: bool = False) -> tuple[tuple[str, str], Index] | None:
        """Return (key, index) of the index ``rel`` names, or None when it does not exist."""
        key = self._find(rel, self.indexes)
        if key is None and any(t.unread is not None for t in self.tables.values()):
            for t in list(self.tables.values()):  # the indexes of PRIMARY KEY / UNIQUE constraints
                self.read(t)
            key = self._find(rel, self.indexes)
        if key is not None:
            return key, self.indexes[key]
        if self.from_catalog or if_exists:
            return None
        key = self._home(rel)
        ix = self.indexes[key] = Index(None)
        return key, ix

    def create_index(self, name: str | None, t: Table | None, *, if_not_exists: bool = False) -> bool:
        """Add an index the plan builds; False when IF NOT EXISTS finds it already there."""
        if name is None:
            return True
        key = (t.schema if t else self.search_path[0], name[:63])
        if if_not_exists and key in self.indexes:
            return False
        self.indexes[key] = Index(t.key if t else None, self.epoch)
        return True

    def table_of(self, ix: Index | None) -> Table | None:
        return self.tables.get(ix.table) if ix is not None and ix.table else None


class _FileLinter:
    """Apply every rule to the statements of one file, in order."""

    def __init__(
        self,
        sql_file: SqlFile,
        migration: str | None,
        schema: Schema,
        pg_version: int,
        settings: Settings,
        tx_counter: list[int],
    ):
        self.file = sql_file
        self.migration = migration
        self.schema = schema
        self.pg = pg_version
        self.settings = settings
        self.no_tx = sql_file.directives.no_transaction
        self.tx_counter = tx_counter
        self.findings: list[Finding] = []
        directive_timeout = sql_file.directives.lock_timeout
        self.lock_timeout = (
            not _is_zero(directive_timeout) if directive_timeout else settings.runner_lock_timeout
        )
        self.lock_timeout_reported = False
        self.added_not_valid: set = set()  # (table key, constraint) added NOT VALID in this transaction
        self.types_on = any(settings.levels[r] != OFF for r in TYPE_RULES)
        self.long_words = _has_long_word(sql_file.text)

    # one statement -------------------------------------------------------------------------------

    def add(
        self,
        rule: str,
        stmt: Stmt,
        index: int,
        message: str,
        fix: str,
        *,
        rel: Rel | None = None,
        table: str | None = None,
        lock: str | None = None,
        effect: str | None = None,
        obj: Table | Index | None = None,
    ) -> None:
        """Report a finding; ``obj`` is the table or index it is about, as the model knows it."""
        t = obj if isinstance(obj, Table) else self.schema.table_of(obj)
        certain = obj is not None and obj.certain
        self.findings.append(
            Finding(
                rule,
                RULES[rule].level,
                self.file.relpath,
                stmt.line,
                stmt.column,
                stmt.first_line,
                message,
                fix,
                table=table or (rel.display if rel else None),
                lock=lock,
                effect=effect,
                migration=self.migration,
                path=str(self.file.path),
                statement_index=index,
                certain=certain,
                rows=t.rows if certain and t is not None else None,
                empty=certain and t is not None and t.empty,
            )
        )

    def takes_access_exclusive(
        self, stmt: Stmt, index: int, rel: Rel | None, what: str, t: Table | None = None
    ) -> None:
        """Report a missing lock_timeout once per file, at the first ACCESS EXCLUSIVE lock on an existing table."""
        if (
            self.lock_timeout
            or self.lock_timeout_reported
            or rel is None
            or t is None
            or self.schema.is_new(t)
        ):
            return
        self.lock_timeout_reported = True
        self.add(
            "missing-lock-timeout",
            stmt,
            index,
            f"{what} waits for every running query on {rel.display}, and every query that arrives meanwhile "
            "waits behind it: with no lock_timeout one long transaction stalls the whole table (the "
            "setting NIXMIG['LOCK_TIMEOUT'] is off).",
            "Add '-- nixmig:lock-timeout=5s' at the top of the file (nixmig retries after a timeout), or set "
            "NIXMIG['LOCK_TIMEOUT'].",
            rel=rel,
            lock=ACCESS_EXCLUSIVE,
            obj=t,
        )

    def transaction(self, index: int) -> tuple[int, int]:
        """Return an id of the transaction a statement runs in."""
        return (self.tx_counter[0], index if self.no_tx else -1)

    def fast(self, stmt: Stmt, index: int) -> bool:
        """Handle a plain CREATE TABLE, or a CREATE INDEX on a new table, without parsing; True if done."""
        text = self.file.text
        m = _fast("table").match(text, stmt.start)
        if m and not self.types_on:
            t = self.schema.create_table(_fast_rel(m, 2), if_not_exists=bool(m.group(1)))
            if t is not None:
                t.unread = text[stmt.start : stmt.end]  # parsed if a later statement needs its columns
            return True
        m = _fast("index").match(text, stmt.start)
        if m and not m.group(1):  # CONCURRENTLY goes to the parser: its rules read the whole statement
            t = self.schema.table(_fast_rel(m, 3))
            name = _fast("index_name").match(text, stmt.start)
            if self.schema.is_new(t) and name:
                self.schema.create_index(_fold(name.group(1)), t, if_not_exists=bool(m.group(2)))
                return True
        return False

    def lint(self, stmts: list[Stmt]) -> list[Finding]:
        text = self.file.text
        for index, stmt in enumerate(stmts):
            if not self.long_words and (not _INTERESTING.match(text, stmt.start) or self.fast(stmt, index)):
                continue
            kind, node, error = parse(text[stmt.start : stmt.end])
            # The parse tree goes to this statement's handler only, not onto the statement: kept on
            # every Stmt, the trees of a 137,000-statement file held 700 MiB until the file was done.
            stmt.kind, stmt.parse_error = kind, error
            if stmt.parse_error is not None:
                self.add(
                    "unparsed-statement",
                    stmt,
                    index,
                    f"pglast could not parse this statement ({stmt.parse_error}), so it was not linted; the "
                    "server will judge it.",
                    "Check the statement by hand, or suppress this with a reason.",
                )
                continue
            for name in dict.fromkeys(
                _long_identifiers(self.file.text[stmt.start : stmt.end]) if self.long_words else ()
            ):
                self.add(
                    "identifier-too-long",
                    stmt,
                    index,
                    f"the identifier {name[:40]}... is {len(name.encode('utf-8'))} bytes; PostgreSQL keeps the "
                    "first 63 and drops the rest without an error, so two long names can collide and "
                    "later statements that spell it in full still work while the catalog shows another name.",
                    "Use a name of at most 63 bytes.",
                )
            handler = getattr(self, "on_" + stmt.kind, None) if stmt.kind else None
            if handler is not None:
                handler(stmt, index, node)
        return self.findings

    # statements ----------------------------------------------------------------------------------

    def on_CreateStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        if rel is None:
            return
        t = self.schema.create_table(rel, if_not_exists=bool(node.get("if_not_exists")))
        if t is None:
            return  # IF NOT EXISTS, and it exists: nothing happens
        self.schema.learn_table(t, node)
        if self.types_on:
            for elt in node.get("tableElts", []):
                if elt.get("ColumnDef"):
                    self.check_types(stmt, index, rel, elt["ColumnDef"])

    def on_CreateTableAsStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        into = node.get("into", {})
        rel = _rangevar(into.get("IntoClause", into).get("rel"))
        if rel is not None:
            t = self.schema.create_table(rel, if_not_exists=bool(node.get("if_not_exists")))
            if t is not None:
                t.complete = False  # its columns come from a query

    def on_AlterObjectSchemaStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        if rel is None or node.get("objectType") not in ("OBJECT_TABLE", "OBJECT_INDEX"):
            return
        if node.get("objectType") == "OBJECT_TABLE":
            t = self.schema.table(rel, if_exists=bool(node.get("missing_ok")))
            if t is not None:
                self.schema.rename_table(t, schema=node.get("newschema"))
        else:
            found = self.schema.index(rel, if_exists=bool(node.get("missing_ok")))
            if found is not None:
                key, ix = found
                # SET SCHEMA always names the schema
                self.schema.indexes[(node["newschema"], key[1])] = self.schema.indexes.pop(key)

    def not_rerunnable(self, stmt: Stmt, index: int, rel: Rel | None, t: Table | None) -> None:
        what = "CREATE INDEX CONCURRENTLY"
        self.add(
            "create-without-if-not-exists",
            stmt,
            index,
            f"this statement can't share a transaction with the record of its progress: if the run stops "
            f"after it and the file is run again by hand or by another tool, the {what} fails with "
            "'already exists'.",
            f"Write {what} IF NOT EXISTS.",
            rel=rel,
            obj=t,
        )

    def check_types(self, stmt: Stmt, index: int, rel: Rel, col: dict) -> None:
        if not self.types_on:
            return
        name, mods = _type_of(col.get("typeName", {}))
        name = _ALIASES.get(name, name)
        colname = col.get("colname")
        where = f"{rel.display}.{colname}"
        if name in ("int4", "int2", "serial", "smallserial"):
            self.add(
                "prefer-bigint",
                stmt,
                index,
                f"{where} is {name}: 32-bit keys and counters run out at "
                "2,147,483,647, and widening later rewrites the table.",
                "Use bigint (or bigint identity).",
                rel=rel,
            )
        if name in _SERIAL or name in ("serial", "bigserial", "smallserial"):
            self.add(
                "prefer-identity",
                stmt,
                index,
                f"{where} is {name}: a serial's sequence has its own owner "
                "and grants, and copying rows with explicit ids leaves it behind.",
                "Use bigint GENERATED ALWAYS AS IDENTITY.",
                rel=rel,
            )
        if name in ("varchar", "bpchar") and mods:
            self.add(
                "prefer-text",
                stmt,
                index,
                f"{where} is {name}({mods[0]}): raising the limit later takes "
                "an ACCESS EXCLUSIVE lock, and char(n) pads with spaces.",
                "Use text, with a CHECK (length(col) <= n) added NOT VALID if the limit matters.",
                rel=rel,
            )
        if name == "timestamp":
            self.add(
                "prefer-timestamptz",
                stmt,
                index,
                f"{where} is timestamp without time zone: its values "
                "mean different instants for clients in different time zones.",
                "Use timestamptz.",
                rel=rel,
            )

    def on_IndexStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        t = self.schema.table(rel)
        concurrent = bool(node.get("concurrent"))
        name = node.get("idxname")
        if not self.schema.create_index(
            name or _generated_index_name(rel, node), t, if_not_exists=bool(node.get("if_not_exists"))
        ):
            return  # IF NOT EXISTS, and it exists: nothing is built
        if concurrent and not name:
            self.add(
                "unnamed-concurrent-index",
                stmt,
                index,
                "PostgreSQL names this index itself (t_a_idx, then t_a_idx1, ...): if the build is "
                "interrupted it leaves an INVALID index under that name, and a second run builds another one "
                "beside it; name the index so a resume can find it (and drop or keep what the first run left).",
                "Write CREATE INDEX CONCURRENTLY IF NOT EXISTS <name> ON ...",
                rel=rel,
                obj=t,
            )
        if concurrent and not self.no_tx:
            self.add(
                "concurrently-in-transaction",
                stmt,
                index,
                "CREATE INDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this file in "
                "one: the run is refused.",
                f"Move the statement into {NO_TX_FILE}.",
                rel=rel,
                obj=t,
            )
        if concurrent and self.no_tx and not node.get("if_not_exists") and name:
            self.not_rerunnable(stmt, index, rel, t)
        if concurrent or t is None or self.schema.is_new(t):
            return
        unique = "UNIQUE " if node.get("unique") else ""
        fix = (
            f"Write CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS (this file already runs outside a transaction)."
            if self.no_tx
            else f"Move it into {NO_TX_FILE} and write CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS."
        )
        self.add(
            "create-index-not-concurrently",
            stmt,
            index,
            "the build reads the whole table while every INSERT, UPDATE and DELETE on it waits.",
            fix,
            rel=rel,
            lock="SHARE",
            effect="scans it to build the index",
            obj=t,
        )

    def on_DropStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        kind = node.get("removeType")
        objects = [_qualified(_names(o)) for o in node.get("objects", [])]
        missing_ok = bool(node.get("missing_ok"))
        if kind == "OBJECT_INDEX":
            concurrent = bool(node.get("concurrent"))
            for idx in filter(None, objects):
                found = self.schema.index(idx, if_exists=missing_ok)
                if found is None:
                    continue  # IF EXISTS, and it does not exist (or the plan made it where the model can't see)
                key, ix = found
                del self.schema.indexes[key]
                t = self.schema.table_of(ix)
                rel = Rel(t.schema if t.schema != "public" else None, t.name) if t is not None else None
                if concurrent and not self.no_tx:
                    self.add(
                        "concurrently-in-transaction",
                        stmt,
                        index,
                        "DROP INDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this "
                        "file in one: the run is refused.",
                        f"Move the statement into {NO_TX_FILE}.",
                        table=rel.display if rel else None,
                        obj=ix,
                    )
                if concurrent or self.schema.is_new(ix) or self.schema.is_new(t):
                    continue
                fix = (
                    "Write DROP INDEX CONCURRENTLY IF EXISTS (this file already runs outside a transaction)."
                    if self.no_tx
                    else f"Move it into {NO_TX_FILE} and write DROP INDEX CONCURRENTLY IF EXISTS."
                )
                self.add(
                    "drop-index-not-concurrently",
                    stmt,
                    index,
                    f"dropping {idx.display} waits for every query on its table and blocks all new ones, reads "
                    "included, until the migration commits.",
                    fix,
                    table=rel.display if rel else f"the table of {idx.display}",
                    lock=ACCESS_EXCLUSIVE,
                    obj=ix,
                )
                self.takes_access_exclusive(stmt, index, rel, "DROP INDEX", t)
        elif kind in ("OBJECT_TABLE", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
            for rel in filter(None, objects):
                t = self.schema.table(rel, if_exists=missing_ok)
                if t is None:
                    continue
                self.schema.drop_table(t)
                if self.schema.is_new(t) or kind != "OBJECT_TABLE":
                    continue
                self.add(
                    "drop-table",
                    stmt,
                    index,
                    f"the application version still running during the deploy reads {rel.display}; its "
                    "queries fail from this moment, and the data is gone.",
                    "Deploy code that no longer uses the table first, drop it in a later migration, and "
                    "suppress this finding there with the reason.",
                    rel=rel,
                    lock=ACCESS_EXCLUSIVE,
                    effect="breaks running code",
                    obj=t,
                )
                self.takes_access_exclusive(stmt, index, rel, "DROP TABLE", t)

    def on_ReindexStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        params = [p.get("DefElem", {}).get("defname") for p in node.get("params", [])]
        concurrent = "concurrently" in params or node.get("concurrent")
        rel = _rangevar(node.get("relation"))
        obj: Table | Index | None = None
        if node.get("kind") == "REINDEX_OBJECT_INDEX" and rel is not None:
            found = self.schema.index(rel)
            if found is None:
                return  # made by the plan where the model can't see: new
            obj = found[1]
            t = self.schema.table_of(obj)
            rel = Rel(t.schema if t.schema != "public" else None, t.name) if t is not None else None
        else:
            obj = t = self.schema.table(rel) if rel is not None else None
            if rel is not None and t is None:
                return
        if concurrent and not self.no_tx:
            self.add(
                "concurrently-in-transaction",
                stmt,
                index,
                "REINDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this file in one: "
                "the run is refused.",
                f"Move the statement into {NO_TX_FILE}.",
                rel=rel,
                obj=obj,
            )
        if concurrent or self.schema.is_new(obj) or self.schema.is_new(t):
            return
        fix = (
            "Write REINDEX ... CONCURRENTLY in "
            + ("this file (it already runs outside a transaction)." if self.no_tx else NO_TX_FILE + ".")
            if self.pg >= 12
            else "Build a new index with CREATE INDEX CONCURRENTLY, then drop the old one "
            "(REINDEX CONCURRENTLY needs PostgreSQL 12)."
        )
        self.add(
            "reindex-not-concurrently",
            stmt,
            index,
            "writes to the table wait for the rebuild, and so do reads that use the index.",
            fix,
            rel=rel,
            table=None if rel else "the table",
            lock="SHARE",
            effect="rebuilds its indexes",
            obj=obj,
        )

    def on_VacuumStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        options = [o.get("DefElem", {}).get("defname") for o in node.get("options", [])]
        if not node.get("is_vacuumcmd") or "full" not in options:
            return
        rels = [_rangevar(r.get("VacuumRelation", {}).get("relation")) for r in node.get("rels", [])]
        for rel in rels or [None]:
            t = self.schema.table(rel) if rel is not None else None
            if rel is not None and (t is None or self.schema.is_new(t)):
                continue
            self.add(
                "vacuum-full",
                stmt,
                index,
                "VACUUM FULL copies the whole table while nobody can read or write it.",
                "Use plain VACUUM (it frees space for reuse without a lock), or pg_repack / pg_squeeze "
                "outside the migration.",
                rel=rel,
                table=None if rel else "every table",
                lock=ACCESS_EXCLUSIVE,
                effect="rewrites it",
                obj=t,
            )

    def on_ClusterStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        t = self.schema.table(rel) if rel is not None else None
        if rel is not None and (t is None or self.schema.is_new(t)):
            return
        self.add(
            "cluster",
            stmt,
            index,
            "CLUSTER copies the whole table in index order while nobody can read or write it.",
            "Use pg_repack outside the migration, or drop the statement.",
            rel=rel,
            table=None if rel else "every clustered table",
            lock=ACCESS_EXCLUSIVE,
            effect="rewrites it",
            obj=t,
        )
        self.takes_access_exclusive(stmt, index, rel, "CLUSTER", t)

    def on_LockStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        mode = LOCK_MODES.get(node.get("mode", 8), ACCESS_EXCLUSIVE)
        for r in node.get("relations", []):
            rel = _rangevar(r)
            t = self.schema.table(rel)
            if t is None or self.schema.is_new(t):
                continue
            self.add(
                "lock-table",
                stmt,
                index,
                f"the {mode} lock is held until the migration commits, and everything after this statement "
                "runs while other sessions wait.",
                "Drop the explicit LOCK if the statements that follow take "
                "the locks they need; otherwise keep the migration short and set a lock timeout.",
                rel=rel,
                lock=mode,
                obj=t,
            )
            if mode == ACCESS_EXCLUSIVE:
                self.takes_access_exclusive(stmt, index, rel, "LOCK TABLE", t)

    def on_TruncateStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        if node.get("behavior") != "DROP_CASCADE":
            return
        for r in node.get("relations", []):
            rel = _rangevar(r)
            t = self.schema.table(rel)  # None when rel is
            if rel is None or t is None or self.schema.is_new(t):
                continue
            self.add(
                "truncate-cascade",
                stmt,
                index,
                f"CASCADE also empties every table with a foreign key to {rel.display}, and theirs in turn: "
                "more data is deleted than the statement names.",
                "TRUNCATE the tables you mean by name, without CASCADE.",
                rel=rel,
                lock=ACCESS_EXCLUSIVE,
                effect="deletes the rows of referencing tables",
                obj=t,
            )

    def on_RenameStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        kind = node.get("renameType")
        rel = _rangevar(node.get("relation"))
        newname = node.get("newname", "")
        missing_ok = bool(node.get("missing_ok"))
        if rel is None:
            return
        if kind == "OBJECT_INDEX":
            found = self.schema.index(rel, if_exists=missing_ok)
            if found is not None:
                key, ix = found
                self.schema.indexes[(key[0], newname)] = self.schema.indexes.pop(key)
            return
        if kind not in (
            "OBJECT_TABLE",
            "OBJECT_MATVIEW",
            "OBJECT_FOREIGN_TABLE",
            "OBJECT_COLUMN",
            "OBJECT_TABCONSTRAINT",
        ):
            return
        t = self.schema.table(rel, if_exists=missing_ok)
        if t is None:
            return
        old = not self.schema.is_new(t)
        if kind in ("OBJECT_TABLE", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
            self.schema.rename_table(t, name=newname)
            if kind != "OBJECT_TABLE" or not old:
                return
            self.add(
                "rename-table",
                stmt,
                index,
                f"the application version still running during the deploy queries {rel.display}, which "
                "no longer exists once this commits.",
                "Create the new table (or a view under the new name), move the code over in a deploy, then "
                "drop the old name in a later migration.",
                rel=rel,
                lock=ACCESS_EXCLUSIVE,
                effect="breaks running code",
                obj=t,
            )
            self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE ... RENAME", t)
        elif kind == "OBJECT_TABCONSTRAINT" and node.get("subname") is not None:
            key = (t.schema, node["subname"])
            if self.schema.indexes.get(key) is not None and self.schema.indexes[key].table == t.key:
                self.schema.indexes[(t.schema, newname)] = self.schema.indexes.pop(key)
        elif kind == "OBJECT_COLUMN" and node.get("relationType") == "OBJECT_TABLE":
            col = self.schema.column(t, node.get("subname"))
            if col is None:
                return
            t.columns[newname] = t.columns.pop(node.get("subname"))
            proven = self.schema.proven_not_null.pop((t.key, node.get("subname")), None)
            if proven is not None:
                self.schema.proven_not_null[(t.key, newname)] = proven
            if not old or self.schema.is_new(col):
                return
            self.add(
                "rename-column",
                stmt,
                index,
                f"the running application still reads and writes {rel.display}.{node.get('subname')}.",
                "Add the new column, write both from the code, backfill, move reads over, then drop the old "
                "column in a later migration.",
                rel=rel,
                lock=ACCESS_EXCLUSIVE,
                effect="breaks running code",
                obj=t,
            )
            self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE ... RENAME COLUMN", t)

    def on_TransactionStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        word = stmt.first_line.split()[0].upper() if stmt.first_line.split() else "BEGIN"
        where = (
            "nixmig refuses it in a '-- nixmig:no-transaction' file, where every statement runs on its own"
            if self.no_tx
            else "nixmig strips a top-level BEGIN/COMMIT and refuses ROLLBACK, but the file no longer runs the "
            "same under psql or another runner (the Nixopus Go migrator commits its own transaction early)"
        )
        self.add(
            "transaction-control",
            stmt,
            index,
            f"{word} inside a migration fights the runner's transaction: {where}.",
            "Remove it: nixmig runs each file in a transaction (or statement by statement with "
            "'-- nixmig:no-transaction').",
        )

    def on_VariableSetStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        if node.get("name") == "lock_timeout":
            values = [a.get("A_Const", {}) for a in node.get("args", [])]
            text = ""
            for v in values:
                text = str((v.get("sval") or {}).get("sval", "") or (v.get("ival") or {}).get("ival", "0"))
            self.lock_timeout = node.get("kind") == "VAR_SET_VALUE" and not _is_zero(text)
        elif node.get("name") == "search_path" and node.get("kind") == "VAR_SET_VALUE":
            path = []
            for a in node.get("args", []):
                const = a.get("A_Const", {})
                value = (const.get("sval") or {}).get("sval")
                if value:
                    path.append(value)
            if path and not node.get("is_local"):
                self.schema.search_path = [p for p in path if p != "$user"] or ["public"]

    def on_AlterTableStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        if node.get("objtype", "OBJECT_TABLE") != "OBJECT_TABLE":
            return
        rel = _rangevar(node.get("relation"))
        if rel is None:
            return
        t = self.schema.table(rel, if_exists=bool(node.get("missing_ok")))
        if t is None:
            return  # ALTER TABLE IF EXISTS of a table that is not there, or one the plan made out of sight
        self.schema.read(t)
        for item in node.get("cmds", []):
            cmd = item.get("AlterTableCmd", {})
            sub = cmd.get("subtype")
            if sub not in _WEAKER and not (
                sub == "AT_AddConstraint"
                and cmd.get("def", {}).get("Constraint", {}).get("contype") == "CONSTR_FOREIGN"
            ):
                self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE", t)
            handler = getattr(self, "at_" + (sub or ""), None)
            if handler is not None:
                handler(stmt, index, rel, t, cmd)

    # ALTER TABLE subcommands ---------------------------------------------------------------------

    def at_AT_AddColumn(self, stmt, index, rel, t, cmd) -> None:
        new = self.schema.is_new(t)
        col = cmd.get("def", {}).get("ColumnDef", {})
        colname = col.get("colname")
        if cmd.get("missing_ok") and self.schema.column(t, colname, if_exists=True) is not None:
            return  # ADD COLUMN IF NOT EXISTS, and it exists: nothing happens
        type_name = _type_of(col.get("typeName", {}))
        t.columns[colname] = Column(type_name, self.schema.epoch)
        self.check_types(stmt, index, rel, col)
        for c in col.get("constraints", []):
            self.schema.constraint_index(t, c.get("Constraint", {}), [colname])
        if new:
            return
        contypes: dict[str | None, dict] = {}
        for c in col.get("constraints", []):
            con = c.get("Constraint", {})
            contypes.setdefault(con.get("contype"), con)
        serial = _ALIASES.get(type_name[0], type_name[0]) in _SERIAL
        identity = "CONSTR_IDENTITY" in contypes
        default = contypes.get("CONSTR_DEFAULT")
        where = f"{rel.display}.{colname}"
        if serial or identity:
            what = "serial" if serial else "identity"
            pk = " and builds its primary key index" if "CONSTR_PRIMARY" in contypes else ""
            self.add(
                "add-serial-or-identity-column",
                stmt,
                index,
                f"adding the {what} column {where} fills a new value into every row: the table is rewritten"
                f"{pk} while nobody can read or write it.",
                "Add a nullable bigint column, attach a sequence as its default in a separate statement "
                "(new rows only), backfill in batches, then build a unique index CONCURRENTLY and ADD "
                "PRIMARY KEY USING INDEX.",
                rel=rel,
                obj=t,
                lock=ACCESS_EXCLUSIVE,
                effect="rewrites it",
            )
            return
        if default is not None:
            volatile = _volatile_call(default.get("raw_expr"))
            if volatile or self.pg < 11:
                why = (
                    f"the default calls {volatile}(), which is volatile, so every existing row gets its own value"
                    if volatile
                    else f"before PostgreSQL 11 (linting for {self.pg}) any default is written "
                    "into every existing row"
                )
                self.add(
                    "add-column-volatile-default",
                    stmt,
                    index,
                    f"{why}: the table is rewritten while nobody can read or write it.",
                    "Add the column without a default (or with a constant one), set the default in a separate "
                    "ALTER COLUMN ... SET DEFAULT, and backfill existing rows in batches.",
                    rel=rel,
                    obj=t,
                    lock=ACCESS_EXCLUSIVE,
                    effect="rewrites it",
                )
        elif "CONSTR_NOTNULL" in contypes:
            self.add(
                "add-column-not-null-without-default",
                stmt,
                index,
                f"{where} would be NULL in every existing row, so the statement fails as soon as the table "
                "has rows (an empty development database hides this).",
                "Add the column with a constant DEFAULT, or add it nullable, backfill, and SET NOT NULL "
                "later (after a validated CHECK (col IS NOT NULL)).",
                rel=rel,
                obj=t,
                lock=ACCESS_EXCLUSIVE,
            )
        for con in contypes.values():
            if con.get("contype") in ("CONSTR_UNIQUE", "CONSTR_PRIMARY") and not con.get("indexname"):
                self.add(
                    "add-unique-without-using-index",
                    stmt,
                    index,
                    f"the new column's unique index is built while {rel.display} is locked against reads and "
                    "writes.",
                    "Add the column first, CREATE UNIQUE INDEX CONCURRENTLY in a no-transaction "
                    "migration, then ADD CONSTRAINT ... UNIQUE USING INDEX.",
                    rel=rel,
                    obj=t,
                    lock=ACCESS_EXCLUSIVE,
                    effect="builds an index",
                )

    def at_AT_AddConstraint(self, stmt, index, rel, t, cmd) -> None:
        new = self.schema.is_new(t)
        con = cmd.get("def", {}).get("Constraint", {})
        contype = con.get("contype")
        name = con.get("conname")
        tx = self.transaction(index)
        self.schema.constraint_index(t, con, [k.get("String", {}).get("sval") for k in con.get("keys", [])])
        if contype == "CONSTR_CHECK":
            expr = con.get("raw_expr", {}).get("NullTest")
            if expr and expr.get("nulltesttype") == "IS_NOT_NULL":
                fields = _names(expr.get("arg", {}).get("ColumnRef", {}).get("fields", []))
                if len(fields) == 1:
                    if name:
                        self.schema.not_null_checks[(t.key, name)] = fields[0]
                    if not con.get("skip_validation"):
                        self.schema.proven_not_null[(t.key, fields[0])] = tx
        if contype in ("CONSTR_CHECK", "CONSTR_FOREIGN") and con.get("skip_validation"):
            self.added_not_valid.add((t.key, name))
        if new:
            return
        if contype in ("CONSTR_CHECK", "CONSTR_FOREIGN") and not con.get("skip_validation"):
            if contype == "CONSTR_FOREIGN":
                ref = _rangevar(con.get("pktable"))
                what = f"the new foreign key to {ref.display if ref else 'another table'} is checked"
                lock, also = "SHARE ROW EXCLUSIVE", f" (and on {ref.display})" if ref else ""
            else:
                what, lock, also = "the new CHECK is tested", ACCESS_EXCLUSIVE, ""
            self.add(
                "add-constraint-without-not-valid",
                stmt,
                index,
                f"{what} against every existing row while writes to {rel.display}{also} wait.",
                "ADD CONSTRAINT ... NOT VALID (instant; new rows are checked), then VALIDATE CONSTRAINT in a "
                "later migration (it only takes a SHARE UPDATE EXCLUSIVE lock).",
                rel=rel,
                obj=t,
                lock=lock,
                effect="scans it",
            )
        elif contype in ("CONSTR_UNIQUE", "CONSTR_PRIMARY", "CONSTR_EXCLUSION") and not con.get("indexname"):
            kind = {
                "CONSTR_UNIQUE": "UNIQUE",
                "CONSTR_PRIMARY": "PRIMARY KEY",
                "CONSTR_EXCLUSION": "EXCLUDE",
            }[contype]
            self.add(
                "add-unique-without-using-index",
                stmt,
                index,
                f"ADD {kind} builds its index while {rel.display} is locked against reads and writes.",
                "CREATE UNIQUE INDEX CONCURRENTLY in a no-transaction migration, then ADD CONSTRAINT ... "
                f"{kind} USING INDEX (instant)."
                if contype != "CONSTR_EXCLUSION"
                else "There is no USING INDEX form for EXCLUDE: run it in a quiet period and suppress this with the "
                "reason.",
                rel=rel,
                obj=t,
                lock=ACCESS_EXCLUSIVE,
                effect="builds an index",
            )
        elif contype == "CONSTR_NOTNULL":
            for k in con.get("keys", []):
                self.set_not_null(stmt, index, rel, k.get("String", {}).get("sval"), t)

    def at_AT_ValidateConstraint(self, stmt, index, rel, t, cmd) -> None:
        new = self.schema.is_new(t)
        name = cmd.get("name")
        column = self.schema.not_null_checks.get((t.key, name))
        if column:
            self.schema.proven_not_null[(t.key, column)] = self.transaction(index)
        if (t.key, name) in self.added_not_valid and not self.no_tx and not new:
            self.add(
                "validate-in-same-transaction",
                stmt,
                index,
                f"{name} was added NOT VALID earlier in this file, so the ADD's lock is still held while "
                "VALIDATE scans the table: NOT VALID gains nothing.",
                "Move VALIDATE CONSTRAINT into a later migration.",
                rel=rel,
                obj=t,
                lock=ACCESS_EXCLUSIVE,
                effect="scans it",
            )

    def at_AT_SetNotNull(self, stmt, index, rel, t, cmd) -> None:
        col = self.schema.column(t, cmd.get("name"))
        if not self.schema.is_new(t) and col is not None and not self.schema.is_new(col):
            self.set_not_null(stmt, index, rel, cmd.get("name"), t)

    def set_not_null(self, stmt, index, rel, column, t) -> None:
        proven = self.schema.proven_not_null.get((t.key, column))
        if self.pg >= 12 and proven is not None and proven != self.transaction(index):
            return
        fix = (
            "Add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in a later migration, then SET NOT NULL (no "
            "scan since PostgreSQL 12) and drop the CHECK."
            if self.pg >= 12
            else "Before PostgreSQL 12 SET NOT NULL always scans: keep a validated CHECK (col IS NOT NULL) instead."
        )
        self.add(
            "set-not-null",
            stmt,
            index,
            f"PostgreSQL reads every row of {rel.display} to prove {column} has no NULL, while nobody can read "
            "or write the table.",
            fix,
            rel=rel,
            obj=t,
            lock=ACCESS_EXCLUSIVE,
            effect="scans it",
        )

    def at_AT_DropNotNull(self, stmt, index, rel, t, cmd) -> None:
        col = self.schema.column(t, cmd.get("name"))
        if self.schema.is_new(t) or col is None or self.schema.is_new(col):
            return
        self.add(
            "drop-not-null",
            stmt,
            index,
            f"{rel.display}.{cmd.get('name')} may hold NULL from now on, which code still running may not "
            "handle.",
            "Deploy code that copes with NULL first, then suppress this finding with the reason.",
            rel=rel,
            obj=t,
            lock=ACCESS_EXCLUSIVE,
        )

    def at_AT_DropConstraint(self, stmt, index, rel, t, cmd) -> None:
        key = (t.schema, cmd.get("name"))
        ix = self.schema.indexes.get(key)
        if ix is not None and ix.table == t.key:
            del self.schema.indexes[key]  # the index of a PRIMARY KEY / UNIQUE constraint goes with it

    def at_AT_DropColumn(self, stmt, index, rel, t, cmd) -> None:
        col = self.schema.column(t, cmd.get("name"), if_exists=bool(cmd.get("missing_ok")))
        if col is None:
            return  # DROP COLUMN IF EXISTS, and it is not there
        del t.columns[cmd.get("name")]
        if self.schema.is_new(t) or self.schema.is_new(col):
            return
        self.add(
            "drop-column",
            stmt,
            index,
            f"the application version still running during the deploy selects or inserts "
            f"{rel.display}.{cmd.get('name')}; those queries fail from this moment (and an ORM that lists "
            "columns breaks even without using it).",
            "Deploy code that no longer uses the column first, drop it in a later migration, and suppress "
            "this finding there with the reason.",
            rel=rel,
            obj=t,
            lock=ACCESS_EXCLUSIVE,
            effect="breaks running code",
        )

    def at_AT_AlterColumnType(self, stmt, index, rel, t, cmd) -> None:
        new = self.schema.is_new(t)
        column = cmd.get("name")
        col = cmd.get("def", {}).get("ColumnDef", {})
        new_type = _type_of(col.get("typeName", {}))
        known = self.schema.column(t, column)
        if known is None:
            return  # a column the plan made out of sight
        old_type = known.type
        if isinstance(old_type, dict):
            old_type = _type_of(old_type)
        known.type = new_type
        if new:
            return
        using = "raw_default" in col
        if old_type is not None and not using and _binary_compatible(old_type, new_type):
            return
        widen = (
            ""
            if old_type is not None
            else (
                " (unless it only widens a varchar or numeric, or turns varchar into text: the old type is not "
                "known here; with --database it is read from the server)"
            )
        )
        self.add(
            "alter-column-type",
            stmt,
            index,
            f"changing {rel.display}.{column} to {_show_type(new_type)} copies the table and rebuilds its "
            f"indexes while nobody can read or write it{widen}.",
            "Add a new column of the new type, write both from the code, backfill in batches, then switch "
            "over and drop the old column in later migrations.",
            rel=rel,
            obj=t,
            lock=ACCESS_EXCLUSIVE,
            effect="rewrites it",
        )


def _generated_index_name(rel: Rel | None, node: dict) -> str | None:
    """Return the name PostgreSQL gives an unnamed index: <table>_<columns>_idx ('expr' for expressions)."""
    if rel is None:
        return None
    parts = [rel.name]
    for p in node.get("indexParams", []):
        elem = p.get("IndexElem", {})
        parts.append(elem.get("name") or "expr")
    return "_".join([*parts, "idx"])


def _show_type(t: tuple) -> str:
    name, mods = t
    return f"{name}({','.join(map(str, mods))})" if mods else name


# -- suppression -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    rule: str
    reason: str | None
    line: int
    column: int
    statement: int | None  # index of the statement it applies to


def _allows(text: str, stmts: list[Stmt]) -> list[Allow]:
    """Return the '-- nixmig:allow' comments of a file, each tied to the statement it stands beside."""
    if "nixmig:" not in text:
        return []
    out = []
    for m in _ALLOW.finditer(text):
        pos = m.start()
        line = line_of(text, pos)
        target = None
        for i, s in enumerate(stmts):
            if s.start <= pos < s.end or (s.end <= pos and line_of(text, s.end) == line):
                target = i  # inside the statement, or a trailing comment on its last line
                break
            if s.start > pos:
                target = i  # the next statement below the comment
                break
        body = _ALLOW_BODY.match(m.group(1).strip())
        rule, reason = (body.group(1), body.group(2) or None) if body else (m.group(1).strip(), None)
        out.append(Allow(rule, reason, line, pos - text.rfind("\n", 0, pos), target))
    return out


# -- linting files ---------------------------------------------------------------------------------


Item = tuple  # (migration id or None, SqlFile)


def lint_files(
    items: Iterable[Item],
    *,
    pg_version: int | None = None,
    settings: Settings | None = None,
    separate: bool = False,
    catalog: Catalog | None = None,
    deployed: Iterable[Item] = (),
) -> Report:
    """Lint up files in run order, following each statement's effect on a model of the schema; pure.

    The model starts from ``catalog`` (the live database before the plan) or from empty; the files of
    ``deployed`` are read into it first, without findings (they are in production already). The
    ``items`` are one plan, or with ``separate`` (``--all``) each file is a plan of its own, run after
    the ones before it were deployed.
    """
    settings = settings or Settings.default()
    pg = pg_version or DEFAULT_PG_VERSION
    schema = Schema(catalog)
    tx_counter = [0]
    for migration, sql_file in deployed:
        tx_counter[0] += 1
        _FileLinter(sql_file, migration, schema, pg, settings, tx_counter).lint(statements(sql_file.text))
    findings: list[Finding] = []
    files = 0
    for migration, sql_file in items:
        if separate or files == 0:
            schema.next_epoch()
        files += 1
        tx_counter[0] += 1
        stmts = statements(sql_file.text)
        found = _FileLinter(sql_file, migration, schema, pg, settings, tx_counter).lint(stmts)
        findings.extend(_settle(found, _allows(sql_file.text, stmts), sql_file, migration, settings, pg))
    findings.sort(key=lambda f: (f.migration or "", f.file, f.line, f.column, ORDER.get(f.level, 3)))
    return Report(findings, files, pg, catalog is not None)


def _settle(
    found: list[Finding], allows: list[Allow], sql_file: SqlFile, migration, settings: Settings, pg: int
) -> list[Finding]:
    """Apply levels, what the catalog says about rows, and the file's allow comments to its findings."""
    out, used = [], set()
    for f in found:
        level = settings.levels.get(f.rule, OFF)
        if level == OFF:
            continue
        if f.certain and RULES[f.rule].needs_rows:
            if f.empty:
                continue  # the catalog shows the table has no row: nothing to wait for
            if (
                RULES[f.rule].downgrades_on_small_tables
                and level != INFO
                and f.rows is not None
                and f.rows < settings.small_table_rows
            ):
                level = INFO
                f = replace(
                    f,
                    message=f"{f.message} (Downgraded: the table has about {f.rows:,.0f} "
                    f"rows, under NIXMIG['LINT_SMALL_TABLE_ROWS'] = {settings.small_table_rows:,}.)",
                )
        hit = next(
            (
                i
                for i, a in enumerate(allows)
                if a.rule == f.rule and a.reason and a.statement == f.statement_index
            ),
            None,
        )
        if hit is not None:
            used.add(hit)
            continue
        out.append(replace(f, level=level) if level != f.level else f)
    out.extend(_allow_findings(allows, used, sql_file, migration, settings))
    return out


def _allow_findings(
    allows: list[Allow], used: set, sql_file: SqlFile, migration, settings: Settings
) -> list[Finding]:
    out = []
    for i, a in enumerate(allows):
        if a.rule not in RULES:
            rule, msg, fix = (
                "bad-allow",
                f"'-- nixmig:allow {a.rule}' names no lint rule, so it suppresses nothing.",
                "Use a rule id from 'python manage.py sqlmigrate_lint --rules'.",
            )
        elif not a.reason:
            rule, msg, fix = (
                "bad-allow",
                f"'-- nixmig:allow {a.rule}' has no reason, so it suppresses nothing: "
                "the reason is what a reviewer reads.",
                f"Write '-- nixmig:allow {a.rule}: <why this is safe here>'.",
            )
        elif i not in used:
            rule, msg, fix = (
                "unused-allow",
                f"'-- nixmig:allow {a.rule}' matches no {a.rule} finding of the statement beside it.",
                "Remove the comment, or move it next to the statement it is meant for.",
            )
        else:
            continue
        level = settings.levels.get(rule, OFF)
        if level == OFF:
            continue
        out.append(
            Finding(
                rule,
                level,
                sql_file.relpath,
                a.line,
                a.column,
                f"-- nixmig:allow {a.rule}",
                msg,
                fix,
                migration=migration,
                path=str(sql_file.path),
            )
        )
    return out


# -- with a database -------------------------------------------------------------------------------


_CATALOG_SQL = """
SELECT n.nspname, c.relname, c.relkind,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples END,
       c.relkind <> 'p' AND c.reltuples <= 0 AND pg_relation_size(c.oid) = 0,
       ARRAY(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       ARRAY(SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid),
       ARRAY(SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.convalidated)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'f') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""
# The search_path rides along in the same round trip: every row carries it, and an empty catalog
# still gives one row, NULL but for it.
_CATALOG_WITH_PATH_SQL = (
    "SELECT current_schemas(false), t.* FROM (SELECT 1) AS one LEFT JOIN (" + _CATALOG_SQL + ") AS t ON true"
)
_CHECK_NOT_NULL = re.compile(r'^CHECK \(\(?("?)(.+?)\1 IS NOT NULL\)?\)$')


def read_catalog(connection, schema: str | None = None) -> Catalog:
    """Return the live catalog's tables, columns, indexes and NOT NULL checks (one query), for the model.

    ``schema``: a schema target, whose unqualified names resolve in it first, then in public (as the
    runner sets search_path); otherwise the connection's own search_path.
    """
    from django.db import DatabaseError

    try:
        with connection.cursor() as cursor:
            cursor.execute(_CATALOG_WITH_PATH_SQL)
            rows = cursor.fetchall()
    except DatabaseError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnavailable(
            f"Lint could not read the database's catalog ({first}); nothing was run. "
            "Check the connection and run again, or pass --no-lint."
        ) from None
    path = (schema, "public") if schema else tuple(rows[0][0])
    tables = []
    for _path, nsp, name, _kind, reltuples, empty, columns, indexes, checks in rows:
        if nsp is None:  # the one row of an empty catalog
            continue
        checked = set()
        for c in checks:
            m = _CHECK_NOT_NULL.match(c)
            if m:
                checked.add(m.group(2).replace('""', '"'))
        cols = {}
        for c in columns:
            col, _, typ = c.partition(" ")
            cols[col] = typ
        tables.append(
            CatalogTable(
                nsp,
                name,
                float(reltuples) if reltuples is not None else (0.0 if empty else None),
                bool(empty),
                cols,
                tuple(indexes),
                frozenset(checked),
            )
        )
    return Catalog(path or ("public",), tuple(tables))


def server_version(connection) -> int:
    """Return the server's major version (e.g. 15)."""
    connection.ensure_connection()
    return int(connection.pg_version) // 10000


# -- what the commands and the runner call ---------------------------------------------------------

_skip = contextvars.ContextVar("nixmig_lint_skip", default=False)


@contextmanager
def skipped(skip: bool = True) -> Iterator[None]:
    """Within this block, sqlmigrate_up / migrate_up don't lint their plan (``--no-lint``)."""
    token = _skip.set(skip)
    try:
        yield
    finally:
        _skip.reset(token)


def lint_entries(
    entries,
    *,
    connection=None,
    pg_version: int | None = None,
    settings: Settings | None = None,
    schema: str | None = None,
) -> Report:
    """Lint the up files of planned entries as one plan, over the live catalog of ``connection`` when given.

    Over a catalog, an error is only one on an object the catalog shows existed before the plan:
    anything the model could not resolve (an object it assumed, a statement naming none) is a
    warning, so this report (status, the admin, sqlmigrate_lint of pending migrations) counts
    exactly what sqlmigrate_up refuses.
    """
    items = [(e.id, e.migration.up) for e in entries if e.migration is not None]
    if connection is not None and pg_version is None:
        pg_version = server_version(connection)
    report = lint_files(
        items,
        pg_version=pg_version,
        settings=settings or Settings.from_django(),
        catalog=read_catalog(connection, schema) if connection is not None else None,
    )
    if connection is not None:
        report.findings = [
            replace(f, level=WARNING) if f.level == ERROR and not f.certain else f for f in report.findings
        ]
    report.mode = (
        "one plan over the database's catalog" if connection is not None else "one plan, starting from empty"
    )
    return report


def _wanted(tree: Tree, ids: list[str] | None) -> set[str] | None:
    if not ids:
        return None
    wanted = set()
    for mid in ids:
        m = tree.get(mid)
        if m is None:
            raise NixmigError(
                f"{mid} is not a migration of {tree.directory}; sqlmigrate_status lists the ids (module/NNN_name)."
            )
        wanted.add(m.id)
    return wanted


def lint_tree(
    tree: Tree,
    ids: list[str] | None = None,
    *,
    connection=None,
    pg_version: int | None = None,
    settings: Settings | None = None,
) -> Report:
    """Lint every migration of a tree (or ``ids``), each file as if it ran alone after the ones before it.

    The model starts from empty (earlier files teach it tables, column types and constraints); with a
    connection, only the server's version is read from it, and the rows of its tables count.
    """
    wanted = _wanted(tree, ids)
    if connection is not None and pg_version is None:
        pg_version = server_version(connection)
    report = lint_files(
        [(m.id, m.up) for m in tree.migrations],
        pg_version=pg_version,
        settings=settings or Settings.from_django(),
        separate=True,
    )
    if connection is not None:
        report = _sized(report, read_catalog(connection), settings or Settings.from_django())
    report.mode = "each file as if the ones before it were deployed, starting from an empty database"
    if wanted is not None:
        report.findings = [f for f in report.findings if f.migration in wanted]
        report.files = len(wanted)
    return report


def _sized(report: Report, catalog: Catalog, settings: Settings) -> Report:
    """Downgrade lock findings on tables the live catalog shows small (``--all`` with a database)."""
    sizes = {}
    for t in catalog.tables:
        sizes[(t.schema, t.name)] = t
        if t.schema in catalog.search_path[:1]:
            sizes.setdefault((None, t.name), t)
    out = []
    for f in report.findings:
        rel = f.table.rpartition(".") if f.table else None
        known = sizes.get((rel[0] or None, rel[2])) if rel else None
        if (
            known is not None
            and RULES[f.rule].downgrades_on_small_tables
            and f.level != INFO
            and known.rows is not None
            and known.rows < settings.small_table_rows
        ):
            f = replace(
                f,
                level=INFO,
                message=f"{f.message} (Downgraded: the table has about {known.rows:,.0f} rows, under "
                f"NIXMIG['LINT_SMALL_TABLE_ROWS'] = {settings.small_table_rows:,}.)",
            )
        out.append(f)
    report.findings = out
    report.sized = True
    return report


def changed_since(tree: Tree, ref: str) -> set[str]:
    """Return the ids of migrations whose up file was added or changed since git ``ref`` (committed or not)."""
    import subprocess

    directory = tree.directory
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        )
        diff = subprocess.run(
            ["git", "diff", "--name-only", "--no-renames", "-z", ref, "--", "."],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "-z", "--", "."],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except FileNotFoundError:
        raise NixmigError("--since needs git, which is not installed here.") from None
    except subprocess.CalledProcessError as exc:
        why = (exc.stderr or "").strip().splitlines()
        raise NixmigError(
            f"--since {ref}: git can't compare {directory} with {ref!r}"
            f"{' (' + why[0] + ')' if why else ' (no such commit, branch or tag)'}. Name a commit, branch or tag "
            "the repository has (in CI, fetch it first, e.g. 'git fetch origin main' and '--since origin/main')."
        ) from None
    import os

    changed = {os.path.realpath(os.path.join(top, p)) for p in diff.split("\0") if p}
    changed |= {os.path.realpath(os.path.join(directory, p)) for p in untracked.split("\0") if p}
    return {m.id for m in tree.migrations if m.up is not None and os.path.realpath(m.up.path) in changed}


def lint_since(
    tree: Tree,
    ref: str,
    *,
    connection=None,
    pg_version: int | None = None,
    settings: Settings | None = None,
) -> Report:
    """Lint the migrations added or changed since git ``ref`` as one plan, the older ones taken as deployed."""
    changed = changed_since(tree, ref)
    if connection is not None and pg_version is None:
        pg_version = server_version(connection)
    settings = settings or Settings.from_django()
    deployed = [(m.id, m.up) for m in tree.migrations if m.id not in changed and m.up is not None]
    report = lint_files(
        [(m.id, m.up) for m in tree.migrations if m.id in changed and m.up is not None],
        pg_version=pg_version,
        settings=settings,
        deployed=deployed,
    )
    if connection is not None:
        report = _sized(report, read_catalog(connection), settings)
    report.mode = (
        f"{report.files} migration(s) added or changed since {ref} as one plan, "
        f"{len(deployed)} older migration(s) taken as deployed"
    )
    return report


def lint_pending(
    *,
    directory=None,
    database: str = "default",
    tree: Tree | None = None,
    status=None,
    pg_version: int | None = None,
) -> Report:
    """Lint what the next sqlmigrate_up would run on ``database`` (its pending migrations, in order)."""
    from . import api

    if status is None:
        tree = tree or api.load_tree(directory)
        status = api.status(tree=tree, database=database, create_table=False)
    pending = status.pending
    if not pending:
        return Report([], 0, pg_version)
    return lint_entries(pending, connection=api.connection_for(database), pg_version=pg_version)


def plan_check(
    *,
    direction: str,
    entries,
    prepared=None,
    connection=None,
    fake: bool = False,
    emit: Callable[..., None] | None = None,
    schema: str | None = None,
    **_,
) -> None:
    """The runner's plan check: refuse an up plan with lint errors (not --fake, not down, not --no-lint)."""
    if direction != "up" or fake or not entries or _skip.get():
        return
    report = lint_entries(entries, connection=connection, schema=schema)  # errors: only what is certain
    report.raise_for_errors()
    if emit is not None and report.counts()[WARNING]:
        emit("lint", report=report)


def pending_summary(status, database: str = "default") -> dict:
    """Return the lint counts of a status's pending migrations, overall and per migration.

    With nothing pending this returns zeros without importing the parser (status stays fast); above
    api.STATUS_PARSE_BYTES of pending SQL it lints nothing and says ``skipped``.
    """
    counts = {ERROR: 0, WARNING: 0, INFO: 0}
    pending = status.pending
    if not pending:
        return {**counts, "migrations": {}}
    from . import api

    if api.over_parse_budget(pending) is not None:  # status says so; sqlmigrate_lint lints them
        return {**counts, "migrations": {}, "skipped": True}
    report = lint_entries(pending, connection=api.connection_for(database))
    per: dict[str | None, dict[str, int]] = {}  # by migration id
    for f in report.findings:
        counts[f.level] += 1
        per.setdefault(f.migration, {ERROR: 0, WARNING: 0, INFO: 0})[f.level] += 1
    return {**counts, "migrations": per}


def counts_text(counts: dict) -> str:
    """Return e.g. '1 error, 2 warnings' for the non-zero levels of a counts dict."""
    parts = []
    for level, one, many in (
        (ERROR, "error", "errors"),
        (WARNING, "warning", "warnings"),
        (INFO, "info", "info"),
    ):
        n = counts.get(level, 0)
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts) or "no findings"
