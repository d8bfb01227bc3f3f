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

from .exceptions import DatabaseUnavailable, LintError, NixmigError
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
    lookup: str | None = field(
        default=None, compare=False, repr=False
    )  # quoted name to size it in the database
    column_name: str | None = field(default=None, compare=False, repr=False)  # for facts about one column
    new_type: tuple | None = field(default=None, compare=False, repr=False)
    statement_index: int = field(default=0, compare=False, repr=False)

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
        start = _LEAD.match(text, a).end()
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
    return '"' + name.replace('"', '""') + '"'


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
    if o == "cidr" and n == "inet":
        return True
    return False


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


@dataclass
class Schema:
    """What the linter learnt from the statements it has read so far (and, with a database, facts)."""

    new_tables: set = field(default_factory=set)  # created in this plan: empty, locks don't matter
    columns: dict = field(default_factory=dict)  # table key -> {column: (type, typmods)}
    index_tables: dict = field(default_factory=dict)  # index name -> Rel
    not_null_checks: dict = field(default_factory=dict)  # (table key, constraint) -> column
    proven_not_null: dict = field(default_factory=dict)  # (table key, column) -> transaction number

    unread: dict = field(default_factory=dict)  # table key -> CREATE TABLE text not parsed yet (fast path)

    def is_new(self, rel: Rel | None) -> bool:
        return rel is not None and rel.key in self.new_tables

    def learn_table(self, rel: Rel, node: dict) -> None:
        """Remember the columns of a CREATE TABLE: their types and which are NOT NULL."""
        self.unread.pop(rel.key, None)
        cols = self.columns.setdefault(rel.key, {})
        for elt in node.get("tableElts", []):
            col = elt.get("ColumnDef")
            if col:
                cols[col.get("colname")] = col.get("typeName", {})  # a TypeName node: read when needed
                for c in col.get("constraints", []):
                    if c.get("Constraint", {}).get("contype") == "CONSTR_NOTNULL":
                        self.proven_not_null[(rel.key, col.get("colname"))] = (-1, -1)

    def read_unread(self, rel: Rel) -> None:
        """Parse a CREATE TABLE the fast path skipped, now that a later statement alters the table."""
        text = self.unread.pop(rel.key, None)
        if text is not None:
            kind, node, _ = parse(text)
            if kind == "CreateStmt":
                self.learn_table(rel, node)


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
        lookup: str | None = None,
        column: str | None = None,
        new_type: tuple | None = None,
    ) -> None:
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
                lookup=lookup or (rel.quoted if rel else None),
                column_name=column,
                new_type=new_type,
                statement_index=index,
            )
        )

    def takes_access_exclusive(self, stmt: Stmt, index: int, rel: Rel | None, what: str) -> None:
        """Report a missing lock_timeout once per file, at the first ACCESS EXCLUSIVE lock on an existing table."""
        if self.lock_timeout or self.lock_timeout_reported or rel is None or self.schema.is_new(rel):
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
        )

    def transaction(self, index: int) -> tuple[int, int]:
        """Return an id of the transaction a statement runs in."""
        return (self.tx_counter[0], index if self.no_tx else -1)

    def fast(self, stmt: Stmt, index: int) -> bool:
        """Handle a plain CREATE TABLE, or a CREATE INDEX on a new table, without parsing; True if done."""
        text = self.file.text
        m = _fast("table").match(text, stmt.start)
        if m and not self.types_on:
            rel = _fast_rel(m, 2)
            self.schema.new_tables.add(rel.key)
            self.schema.unread[rel.key] = text[
                stmt.start : stmt.end
            ]  # parsed if a later ALTER needs its columns
            if self.no_tx and not m.group(1):
                self.not_rerunnable(stmt, index, "CREATE TABLE", rel)
            return True
        m = _fast("index").match(text, stmt.start)
        if m and self.schema.is_new(rel := _fast_rel(m, 3)) and (self.no_tx or not m.group(1)):
            name = _fast("index_name").match(text, stmt.start)
            if name:
                self.schema.index_tables[_fold(name.group(1))] = rel
            if self.no_tx and not m.group(2):
                self.not_rerunnable(stmt, index, "CREATE INDEX", rel)
            return True
        return False

    def lint(self, stmts: list[Stmt]) -> list[Finding]:
        text = self.file.text
        for index, stmt in enumerate(stmts):
            if not self.long_words and (not _INTERESTING.match(text, stmt.start) or self.fast(stmt, index)):
                continue
            kind, node, error = parse(text[stmt.start : stmt.end])
            stmt.kind, stmt.node, stmt.parse_error = kind, node, error
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
                handler(stmt, index, stmt.node)
        return self.findings

    # statements ----------------------------------------------------------------------------------

    def on_CreateStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        if rel is None:
            return
        self.schema.new_tables.add(rel.key)
        self.schema.learn_table(rel, node)
        if self.types_on:
            for elt in node.get("tableElts", []):
                if elt.get("ColumnDef"):
                    self.check_types(stmt, index, rel, elt["ColumnDef"])
        if self.no_tx and not node.get("if_not_exists"):
            self.not_rerunnable(stmt, index, "CREATE TABLE", rel)

    def on_CreateTableAsStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("into", {}).get("IntoClause", node.get("into", {})).get("rel"))
        if rel is not None:
            self.schema.new_tables.add(rel.key)

    def not_rerunnable(self, stmt: Stmt, index: int, what: str, rel: Rel | None) -> None:
        self.add(
            "create-without-if-not-exists",
            stmt,
            index,
            f"this file runs outside a transaction, one statement at a time: if it stops after this "
            f"{what} and is run again by hand (or the statement succeeded but its progress was not "
            "recorded), the {what} fails with 'already exists'.",
            f"Write {what} IF NOT EXISTS.",
            rel=rel,
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
        if node.get("idxname") and rel is not None:
            self.schema.index_tables[node["idxname"]] = rel
        concurrent = bool(node.get("concurrent"))
        if concurrent and not self.no_tx:
            self.add(
                "concurrently-in-transaction",
                stmt,
                index,
                "CREATE INDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this file in "
                "one: the run is refused.",
                f"Move the statement into {NO_TX_FILE}.",
                rel=rel,
            )
        if self.no_tx and not node.get("if_not_exists"):
            self.not_rerunnable(stmt, index, "CREATE INDEX", rel)
        if concurrent or self.schema.is_new(rel):
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
        )

    def on_DropStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        kind = node.get("removeType")
        objects = [_qualified(_names(o)) for o in node.get("objects", [])]
        if kind == "OBJECT_INDEX":
            concurrent = bool(node.get("concurrent"))
            for idx in filter(None, objects):
                rel = self.schema.index_tables.get(idx.name)
                if concurrent and not self.no_tx:
                    self.add(
                        "concurrently-in-transaction",
                        stmt,
                        index,
                        "DROP INDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this "
                        "file in one: the run is refused.",
                        f"Move the statement into {NO_TX_FILE}.",
                        table=rel.display if rel else None,
                        lookup=idx.quoted,
                    )
                if concurrent or self.schema.is_new(rel):
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
                    lookup=idx.quoted,
                )
                self.takes_access_exclusive(stmt, index, rel, "DROP INDEX")
        elif kind == "OBJECT_TABLE":
            for rel in filter(None, objects):
                if self.schema.is_new(rel):
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
                )
                self.takes_access_exclusive(stmt, index, rel, "DROP TABLE")

    def on_ReindexStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        params = [p.get("DefElem", {}).get("defname") for p in node.get("params", [])]
        concurrent = "concurrently" in params or node.get("concurrent")
        rel = _rangevar(node.get("relation"))
        if node.get("kind") == "REINDEX_OBJECT_INDEX" and rel is not None:
            table = self.schema.index_tables.get(rel.name)
            lookup = rel.quoted
            rel = table
        else:
            lookup = rel.quoted if rel else None
        if concurrent and not self.no_tx:
            self.add(
                "concurrently-in-transaction",
                stmt,
                index,
                "REINDEX CONCURRENTLY can't run inside a transaction block, and nixmig runs this file in one: "
                "the run is refused.",
                f"Move the statement into {NO_TX_FILE}.",
                rel=rel,
                lookup=lookup,
            )
        if concurrent or self.schema.is_new(rel):
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
            lookup=lookup,
        )

    def on_VacuumStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        options = [o.get("DefElem", {}).get("defname") for o in node.get("options", [])]
        if not node.get("is_vacuumcmd") or "full" not in options:
            return
        rels = [_rangevar(r.get("VacuumRelation", {}).get("relation")) for r in node.get("rels", [])]
        for rel in rels or [None]:
            if self.schema.is_new(rel):
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
            )

    def on_ClusterStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        rel = _rangevar(node.get("relation"))
        if self.schema.is_new(rel):
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
        )
        self.takes_access_exclusive(stmt, index, rel, "CLUSTER")

    def on_LockStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        mode = LOCK_MODES.get(node.get("mode", 8), ACCESS_EXCLUSIVE)
        for r in node.get("relations", []):
            rel = _rangevar(r)
            if self.schema.is_new(rel):
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
            )
            if mode == ACCESS_EXCLUSIVE:
                self.takes_access_exclusive(stmt, index, rel, "LOCK TABLE")

    def on_TruncateStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        if node.get("behavior") != "DROP_CASCADE":
            return
        for r in node.get("relations", []):
            rel = _rangevar(r)
            if self.schema.is_new(rel):
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
            )

    def on_RenameStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        kind = node.get("renameType")
        rel = _rangevar(node.get("relation"))
        if rel is None:
            return
        if kind == "OBJECT_TABLE":
            if self.schema.is_new(rel):
                self.schema.new_tables.add(Rel(rel.schema, node.get("newname", "")).key)
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
            )
            self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE ... RENAME")
        elif kind == "OBJECT_COLUMN" and node.get("relationType") == "OBJECT_TABLE":
            if self.schema.is_new(rel):
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
            )
            self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE ... RENAME COLUMN")

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

    def on_AlterTableStmt(self, stmt: Stmt, index: int, node: dict) -> None:
        if node.get("objtype", "OBJECT_TABLE") != "OBJECT_TABLE":
            return
        rel = _rangevar(node.get("relation"))
        if rel is None:
            return
        new = self.schema.is_new(rel)
        self.schema.read_unread(rel)
        cols = self.schema.columns.setdefault(rel.key, {})
        for item in node.get("cmds", []):
            cmd = item.get("AlterTableCmd", {})
            sub = cmd.get("subtype")
            if sub not in _WEAKER and not (
                sub == "AT_AddConstraint"
                and cmd.get("def", {}).get("Constraint", {}).get("contype") == "CONSTR_FOREIGN"
            ):
                self.takes_access_exclusive(stmt, index, rel, "ALTER TABLE")
            handler = getattr(self, "at_" + (sub or ""), None)
            if handler is not None:
                handler(stmt, index, rel, new, cmd, cols)

    # ALTER TABLE subcommands ---------------------------------------------------------------------

    def at_AT_AddColumn(self, stmt, index, rel, new, cmd, cols) -> None:
        col = cmd.get("def", {}).get("ColumnDef", {})
        colname = col.get("colname")
        type_name = _type_of(col.get("typeName", {}))
        cols[colname] = type_name
        self.check_types(stmt, index, rel, col)
        if new:
            return
        contypes = {}
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
                    lock=ACCESS_EXCLUSIVE,
                    effect="builds an index",
                )

    def at_AT_AddConstraint(self, stmt, index, rel, new, cmd, cols) -> None:
        con = cmd.get("def", {}).get("Constraint", {})
        contype = con.get("contype")
        name = con.get("conname")
        tx = self.transaction(index)
        if contype == "CONSTR_CHECK":
            expr = con.get("raw_expr", {}).get("NullTest")
            if expr and expr.get("nulltesttype") == "IS_NOT_NULL":
                fields = _names(expr.get("arg", {}).get("ColumnRef", {}).get("fields", []))
                if len(fields) == 1:
                    if name:
                        self.schema.not_null_checks[(rel.key, name)] = fields[0]
                    if not con.get("skip_validation"):
                        self.schema.proven_not_null[(rel.key, fields[0])] = tx
        if contype in ("CONSTR_CHECK", "CONSTR_FOREIGN") and con.get("skip_validation"):
            self.added_not_valid.add((rel.key, name))
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
                lock=ACCESS_EXCLUSIVE,
                effect="builds an index",
            )
        elif contype == "CONSTR_NOTNULL":
            for k in con.get("keys", []):
                self.set_not_null(stmt, index, rel, k.get("String", {}).get("sval"))

    def at_AT_ValidateConstraint(self, stmt, index, rel, new, cmd, cols) -> None:
        name = cmd.get("name")
        column = self.schema.not_null_checks.get((rel.key, name))
        if column:
            self.schema.proven_not_null[(rel.key, column)] = self.transaction(index)
        if (rel.key, name) in self.added_not_valid and not self.no_tx and not new:
            self.add(
                "validate-in-same-transaction",
                stmt,
                index,
                f"{name} was added NOT VALID earlier in this file, so the ADD's lock is still held while "
                "VALIDATE scans the table: NOT VALID gains nothing.",
                "Move VALIDATE CONSTRAINT into a later migration.",
                rel=rel,
                lock=ACCESS_EXCLUSIVE,
                effect="scans it",
            )

    def at_AT_SetNotNull(self, stmt, index, rel, new, cmd, cols) -> None:
        if not new:
            self.set_not_null(stmt, index, rel, cmd.get("name"))

    def set_not_null(self, stmt, index, rel, column) -> None:
        proven = self.schema.proven_not_null.get((rel.key, column))
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
            lock=ACCESS_EXCLUSIVE,
            effect="scans it",
            column=column,
        )

    def at_AT_DropNotNull(self, stmt, index, rel, new, cmd, cols) -> None:
        if new:
            return
        self.add(
            "drop-not-null",
            stmt,
            index,
            f"{rel.display}.{cmd.get('name')} may hold NULL from now on, which code still running may not "
            "handle.",
            "Deploy code that copes with NULL first, then suppress this finding with the reason.",
            rel=rel,
            lock=ACCESS_EXCLUSIVE,
        )

    def at_AT_DropColumn(self, stmt, index, rel, new, cmd, cols) -> None:
        cols.pop(cmd.get("name"), None)
        if new:
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
            lock=ACCESS_EXCLUSIVE,
            effect="breaks running code",
        )

    def at_AT_AlterColumnType(self, stmt, index, rel, new, cmd, cols) -> None:
        column = cmd.get("name")
        col = cmd.get("def", {}).get("ColumnDef", {})
        new_type = _type_of(col.get("typeName", {}))
        old_type = cols.get(column)
        if isinstance(old_type, dict):
            old_type = _type_of(old_type)
        cols[column] = new_type
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
            lock=ACCESS_EXCLUSIVE,
            effect="rewrites it",
            column=None if using else column,
            new_type=new_type,
        )


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
    facts: Callable[[list[Finding]], dict] | None = None,
) -> Report:
    """Lint up files in run order; pure unless ``facts`` reads table sizes from a database.

    ``separate``: each file is its own plan (``--all``): tables created by earlier files are existing
    tables, as in production; what earlier files say about columns and constraints still counts.
    ``facts(findings)`` returns {lookup name: TableFacts} for the tables the findings lock.
    """
    settings = settings or Settings.default()
    pg = pg_version or DEFAULT_PG_VERSION
    schema = Schema()
    raw: list[Finding] = []
    allow_map: list[tuple[list[Allow], SqlFile, str | None]] = []
    files = 0
    tx_counter = [0]
    per_file: list[tuple[list[Finding], list[Allow]]] = []
    for migration, sql_file in items:
        files += 1
        tx_counter[0] += 1
        if separate:
            schema.new_tables = set()
        stmts = statements(sql_file.text)
        found = _FileLinter(sql_file, migration, schema, pg, settings, tx_counter).lint(stmts)
        allows = _allows(sql_file.text, stmts)
        per_file.append((found, allows))
        raw.extend(found)
        allow_map.append((allows, sql_file, migration))
    sized = False
    table_facts = {}
    if facts is not None:
        wanted = [f for f in raw if f.lookup and settings.levels.get(f.rule, OFF) != OFF]
        if wanted:
            table_facts = facts(wanted)
            sized = True
    findings: list[Finding] = []
    for (found, allows), (_, sql_file, migration) in zip(per_file, allow_map):
        used = set()
        for f in found:
            level = settings.levels.get(f.rule, OFF)
            if level == OFF:
                continue
            known = table_facts.get(f.lookup) if f.lookup else None
            if known is not None:
                if f.rule == "set-not-null" and pg >= 12 and f.column_name in known.not_null_checked:
                    continue
                if (
                    f.rule == "alter-column-type"
                    and f.column_name
                    and f.column_name in known.columns
                    and _binary_compatible(_parse_format_type(known.columns[f.column_name]), f.new_type)
                ):
                    continue
                if (
                    RULES[f.rule].downgrades_on_small_tables
                    and level != INFO
                    and known.rows is not None
                    and known.rows < settings.small_table_rows
                ):
                    level = INFO
                    f = replace(
                        f,
                        message=f"{f.message} (Downgraded: the table has about {known.rows:,.0f} "
                        f"rows, under NIXMIG['LINT_SMALL_TABLE_ROWS'] = "
                        f"{settings.small_table_rows:,}.)",
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
            findings.append(replace(f, level=level) if level != f.level else f)
        findings.extend(_allow_findings(allows, used, sql_file, migration, settings))
    findings.sort(key=lambda f: (f.migration or "", f.file, f.line, f.column, ORDER.get(f.level, 3)))
    return Report(findings, files, pg, sized)


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


@dataclass(frozen=True)
class TableFacts:
    rows: float | None  # pg_class.reltuples (None: never analyzed and not empty)
    not_null_checked: frozenset  # columns with a validated CHECK (col IS NOT NULL)
    columns: dict  # column -> format_type()


_FACTS_SQL = """
WITH r AS (SELECT x AS name, to_regclass(x) AS rel FROM unnest(%s::text[]) AS x),
     t AS (SELECT r.name, COALESCE(i.indrelid, r.rel) AS oid FROM r LEFT JOIN pg_index i ON i.indexrelid = r.rel
           WHERE r.rel IS NOT NULL)
SELECT t.name,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples WHEN pg_relation_size(c.oid) = 0 THEN 0 END,
       ARRAY(SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.convalidated),
       ARRAY(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
FROM t JOIN pg_class c ON c.oid = t.oid
"""
_CHECK_NOT_NULL = re.compile(r'^CHECK \(\(?("?)(.+?)\1 IS NOT NULL\)?\)$')


def database_facts(connection) -> Callable[[list[Finding]], dict]:
    """Return a ``facts`` function that sizes the tables of findings with one query on ``connection``."""

    def facts(findings: list[Finding]) -> dict:
        from django.db import DatabaseError

        names = sorted({f.lookup for f in findings if f.lookup})
        out = {}
        try:
            with connection.cursor() as cursor:
                cursor.execute(_FACTS_SQL, [names])
                found = cursor.fetchall()
        except DatabaseError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatabaseUnavailable(
                f"Lint could not read the sizes of the tables its findings name ({first}); nothing was run. "
                "Check the connection and run again, or pass --no-lint."
            ) from None
        for name, rows, checks, columns in found:
            checked = set()
            for c in checks:
                m = _CHECK_NOT_NULL.match(c)
                if m:
                    checked.add(m.group(2).replace('""', '"'))
            cols = {}
            for c in columns:
                col, _, typ = c.partition(" ")
                cols[col] = typ
            out[name] = TableFacts(float(rows) if rows is not None else None, frozenset(checked), cols)
        return out

    return facts


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
    entries, *, connection=None, pg_version: int | None = None, settings: Settings | None = None
) -> Report:
    """Lint the up files of planned entries as one plan, sized on ``connection`` when given."""
    items = [(e.id, e.migration.up) for e in entries if e.migration is not None]
    if connection is not None and pg_version is None:
        pg_version = server_version(connection)
    return lint_files(
        items,
        pg_version=pg_version,
        settings=settings or Settings.from_django(),
        facts=database_facts(connection) if connection is not None else None,
    )


def lint_tree(
    tree: Tree,
    ids: list[str] | None = None,
    *,
    connection=None,
    pg_version: int | None = None,
    settings: Settings | None = None,
) -> Report:
    """Lint every migration of a tree (or ``ids``), each file as if it ran alone after the ones before it."""
    wanted = None
    if ids:
        wanted = []
        for mid in ids:
            m = tree.get(mid)
            if m is None:
                raise NixmigError(
                    f"{mid} is not a migration of {tree.directory}; sqlmigrate_status lists the ids "
                    "(module/NNN_name)."
                )
            wanted.append(m.id)
    if connection is not None and pg_version is None:
        pg_version = server_version(connection)
    # Earlier files teach column types and validated constraints; only the wanted ones report.
    items = []
    for m in tree.migrations:
        items.append((m.id, m.up))
    report = lint_files(
        items,
        pg_version=pg_version,
        settings=settings or Settings.from_django(),
        separate=True,
        facts=database_facts(connection) if connection is not None else None,
    )
    if wanted is not None:
        keep = set(wanted)
        report.findings = [f for f in report.findings if f.migration in keep]
        report.files = len(keep)
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
    **_,
) -> None:
    """The runner's plan check: refuse an up plan with lint errors (not --fake, not down, not --no-lint)."""
    if direction != "up" or fake or not entries or _skip.get():
        return
    report = lint_entries(entries, connection=connection)
    report.raise_for_errors()
    if emit is not None and report.counts()[WARNING]:
        emit("lint", report=report)


def pending_summary(status, database: str = "default") -> dict:
    """Return the lint counts of a status's pending migrations, overall and per migration.

    With nothing pending this returns zeros without importing the parser (status stays fast).
    """
    counts = {ERROR: 0, WARNING: 0, INFO: 0}
    pending = status.pending
    if not pending:
        return {**counts, "migrations": {}}
    from . import api

    report = lint_entries(pending, connection=api.connection_for(database))
    per: dict[str, dict[str, int]] = {}
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
