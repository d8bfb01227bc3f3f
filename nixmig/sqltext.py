"""Split and classify the statements of a SQL file with PostgreSQL's own parser (pglast).

Each file is parsed once, with the C parser (libpg_query's JSON output, which is far
cheaper than building Python AST objects). When libpg_query can't parse a file (it
lags the newest server grammar by a release), the C scanner splits it instead and the
server is left to judge the SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pglast import parser

from .exceptions import TreeError
from .sqlnames import ident
from .tree import SqlFile, line_of

# Statements PostgreSQL refuses inside a transaction block.
_ALWAYS_NO_TX = {
    "VacuumStmt": None,  # VACUUM (not ANALYZE, see below)
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
}
_TX_BEGIN = {"TRANS_STMT_BEGIN", "TRANS_STMT_START"}
_TX_END = {"TRANS_STMT_COMMIT"}
_TX_ROLLBACK = {"TRANS_STMT_ROLLBACK"}
_TX_INSIDE = {"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"}
# Scanner fallback: statement-leading keywords.
_SCAN_TX = {
    "BEGIN_P": "BEGIN",
    "START": "BEGIN",
    "COMMIT": "COMMIT",
    "END_P": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "ABORT_P": "ROLLBACK",
}


@dataclass(frozen=True, slots=True)
class Effect:
    """What a statement PostgreSQL runs outside a transaction leaves in the catalog when it fails or stops.

    Names are unquoted parts (schema, name); ``relation`` is the table (or, for ``REINDEX INDEX``, the
    index; for ``REINDEX SCHEMA`` the schema). Kinds: ``index`` (CREATE INDEX CONCURRENTLY; ``name`` is
    empty when PostgreSQL chooses it), ``reindex``, ``detach`` (``name`` is the partition).
    """

    kind: str
    relation: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # an unnamed index's key columns ("" for an expression)
    unique: bool = False
    target: str = ""  # REINDEX: INDEX, TABLE, SCHEMA, DATABASE or SYSTEM


@dataclass(frozen=True, slots=True)  # slots: 137,000 statements of a big file take a quarter of the memory
class Statement:
    start: int  # character offsets into the file's text
    end: int
    line: int  # line of the statement's first token
    kind: str  # parse node name, e.g. "CreateStmt"; "" when only the scanner split it
    no_transaction: str | None = None  # why it can't run in a transaction, e.g. "CREATE INDEX CONCURRENTLY"
    transaction_control: str | None = None  # "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "PREPARE"
    builds_index: tuple[str, str] | None = None  # CREATE INDEX CONCURRENTLY: (quoted table, index name)
    drops_indexes: tuple[str, ...] = ()  # DROP INDEX CONCURRENTLY without IF EXISTS: quoted index names
    effect: Effect | None = None  # what it leaves in the catalog when it fails or is interrupted


@dataclass(frozen=True)
class Analysis:
    statements: tuple[Statement, ...]
    parsed: bool  # False: the parser failed and the scanner split the file
    parse_error: str | None = None
    unscannable_line: int | None = None  # even the scanner failed (unterminated quote or comment) here

    @property
    def no_transaction(self) -> tuple[Statement, ...]:
        return tuple(s for s in self.statements if s.no_transaction)

    @property
    def transaction_control(self) -> tuple[Statement, ...]:
        return tuple(s for s in self.statements if s.transaction_control)


class _Lines:
    """Line numbers of increasing offsets into one text: linear overall, not one count per statement.

    (Counting from the top for each statement made a 20 MB file of 137,000 INSERTs take ten minutes.)
    """

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, index: int) -> int:
        if index < self.pos:
            return line_of(self.text, index)
        self.line += self.text.count("\n", self.pos, index)
        self.pos = index
        return self.line


def _char_offsets(text: str, byte_offsets: list[int]) -> list[int]:
    """Convert sorted UTF-8 byte offsets into character offsets of ``text``."""
    if text.isascii():
        return byte_offsets
    data = text.encode("utf-8")
    out, chars, last = [], 0, 0
    for b in byte_offsets:
        chars += len(data[last:b].decode("utf-8", errors="replace"))
        last = b
        out.append(chars)
    return out


def _skip_space_and_comments(text: str, i: int, end: int) -> int:
    """Return the index of the first token at or after ``i``."""
    while i < end:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = end if nl == -1 else nl + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < end and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    return i


def _classify(node_name: str, node: dict) -> tuple[str | None, str | None]:
    """Return (no_transaction reason, transaction control) for one parse node."""
    if node_name == "TransactionStmt":
        kind = node.get("kind", "TRANS_STMT_BEGIN")
        if kind in _TX_BEGIN:
            return None, "BEGIN"
        if kind in _TX_END:
            return None, "COMMIT"
        if kind in _TX_ROLLBACK:
            return None, "ROLLBACK"
        if kind in _TX_INSIDE:
            return None, "SAVEPOINT"
        return None, "PREPARE"
    if node_name in _ALWAYS_NO_TX:
        if node_name == "VacuumStmt":
            return ("VACUUM" if node.get("is_vacuumcmd") else None), None
        return _ALWAYS_NO_TX[node_name], None
    if node_name == "IndexStmt" and node.get("concurrent"):
        return "CREATE INDEX CONCURRENTLY", None
    if node_name == "DropStmt" and node.get("concurrent"):
        return "DROP INDEX CONCURRENTLY", None
    if node_name == "ReindexStmt":
        params = [p.get("DefElem", {}).get("defname") for p in node.get("params", [])]
        if "concurrently" in params:
            return "REINDEX ... CONCURRENTLY", None
        if node.get("kind") in ("REINDEX_OBJECT_DATABASE", "REINDEX_OBJECT_SYSTEM"):
            return "REINDEX DATABASE/SYSTEM", None
    if node_name == "ClusterStmt" and not node.get("relation"):
        return "CLUSTER (all tables)", None
    if node_name == "AlterTableStmt":
        for cmd in node.get("cmds", []):
            c = cmd.get("AlterTableCmd", {})
            if c.get("subtype") == "AT_DetachPartition" and c.get("def", {}).get("PartitionCmd", {}).get(
                "concurrent"
            ):
                return "DETACH PARTITION ... CONCURRENTLY", None
    return None, None


def _quote(name: str) -> str:
    return ident(name)


def _built_index(node_name: str, node: dict) -> tuple[str, str] | None:
    """Return (quoted table, index name) of a named CREATE INDEX CONCURRENTLY.

    Such a statement leaves an INVALID index behind when it fails or its runner is killed;
    the executor drops that index before it runs the statement again.
    """
    if node_name != "IndexStmt" or not node.get("concurrent") or not node.get("idxname"):
        return None
    rel = node.get("relation", {})
    parts = [p for p in (rel.get("schemaname"), rel.get("relname")) if p]
    return ".".join(_quote(p) for p in parts), node["idxname"]


def _parts(rel: dict) -> tuple[str, ...]:
    return tuple(p for p in (rel.get("schemaname"), rel.get("relname")) if p)


def _effect(node_name: str, node: dict) -> Effect | None:
    """Return what a non-transactional statement leaves behind when it fails or its runner dies."""
    if node_name == "IndexStmt" and node.get("concurrent"):
        columns = tuple(p.get("IndexElem", {}).get("name") or "" for p in node.get("indexParams", []))
        name = (node["idxname"],) if node.get("idxname") else ()
        return Effect("index", _parts(node.get("relation", {})), name, columns, bool(node.get("unique")))
    if node_name == "ReindexStmt":
        params = [p.get("DefElem", {}).get("defname") for p in node.get("params", [])]
        if "concurrently" in params:
            target = node.get("kind", "").removeprefix("REINDEX_OBJECT_")
            rel = _parts(node["relation"]) if node.get("relation") else (node.get("name") or "",)
            return Effect("reindex", rel, target=target)
    if node_name == "AlterTableStmt":
        for cmd in node.get("cmds", []):
            c = cmd.get("AlterTableCmd", {})
            part = c.get("def", {}).get("PartitionCmd", {})
            if c.get("subtype") == "AT_DetachPartition" and part.get("concurrent"):
                return Effect("detach", _parts(node.get("relation", {})), _parts(part.get("name", {})))
    return None


def _dropped_indexes(node_name: str, node: dict) -> tuple[str, ...]:
    """Return the quoted names a DROP INDEX CONCURRENTLY (without IF EXISTS) drops.

    It is sent outside any transaction, so a killed runner may have dropped them before the
    progress row said so: the executor then counts it as done instead of failing on 'does not exist'.
    """
    if (
        node_name != "DropStmt"
        or node.get("removeType") != "OBJECT_INDEX"
        or not node.get("concurrent")
        or node.get("missing_ok")
    ):
        return ()
    return tuple(
        ".".join(_quote(i["String"]["sval"]) for i in o["List"]["items"]) for o in node.get("objects", [])
    )


# Files above this many characters are parsed in pieces of at most this size, each cut right
# after a top-level ';': the JSON parse tree of a 20 MB file of 137,000 INSERTs took 760 MB as
# Python objects, and libpg_query's own splitter 160 MB in C; a piece's tree is gone before the
# next is built.
CHUNK_CHARS = 1 << 20
_CUT_ATTEMPTS = 4


def analyze(text: str) -> Analysis:
    """Split ``text`` into statements and classify each one."""
    if len(text) <= CHUNK_CHARS:
        return _analyze_whole(text)
    statements: list[Statement] = []
    lines = _Lines(text)
    begin, size = 0, len(text)
    while begin < size:
        if size - begin <= CHUNK_CHARS:
            piece = text[begin:]
            try:
                raw = json.loads(parser.parse_sql_json(piece)).get("stmts", [])
            except parser.ParseError:
                return _analyze_whole(text)  # the whole text's parse reports the error, as it always did
            _add_statements(statements, lines, text, piece, begin, raw)
            break
        found, raw = _piece(text, begin)
        if found is None:
            return _analyze_whole(text)
        _add_statements(statements, lines, text, found, begin, raw)
        begin += len(found)
    return Analysis(tuple(statements), parsed=True)


def _piece(text: str, begin: int) -> tuple[str | None, list]:
    """Return the longest piece from ``begin`` (at most CHUNK_CHARS) that ends with a statement's ';', parsed.

    ``begin`` is right after a top-level ';' (or 0), where the scanner is in its initial state,
    so the piece is scanned exactly as inside the whole text. A ';' that is not a statement's end
    (in a string, a comment, a dollar quote, a BEGIN ATOMIC body) either fails to parse or is not
    where the piece's last statement ends; then the ';' before it is tried.
    """
    stop = begin + CHUNK_CHARS
    for _ in range(_CUT_ATTEMPTS):
        cut = text.rfind(";", begin, stop)
        if cut < 0:
            return None, []
        piece = text[begin : cut + 1]
        stop = cut
        try:
            raw = json.loads(parser.parse_sql_json(piece)).get("stmts", [])
        except parser.ParseError:
            continue
        last = raw[-1] if raw else {}
        piece_bytes = len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        if last.get("stmt_len") and last.get("stmt_location", 0) + last["stmt_len"] == piece_bytes - 1:
            return piece, raw
    return None, []


def analysis_of(sql_file: SqlFile) -> Analysis:
    """Return ``analyze(sql_file.text)``, parsed once per file (a run over several databases shares the tree)."""
    found = sql_file.analysis_cache
    if found is None:
        found = sql_file.analysis_cache = analyze(sql_file.text)
    return found


def _analyze_whole(text: str) -> Analysis:
    try:
        tree = json.loads(parser.parse_sql_json(text))
    except parser.ParseError as exc:
        return _scan_fallback(text, str(exc))
    statements: list[Statement] = []
    _add_statements(statements, _Lines(text), text, text, 0, tree.get("stmts", []))
    return Analysis(tuple(statements), parsed=True)


def _add_statements(statements: list, lines: _Lines, text: str, piece: str, base: int, raw: list) -> None:
    """Append the statements of one parsed piece (which starts at character ``base`` of ``text``)."""
    data_len = len(piece.encode("utf-8")) if not piece.isascii() else len(piece)
    starts = [s.get("stmt_location", 0) for s in raw]
    ends = [st + s["stmt_len"] if s.get("stmt_len") else data_len for st, s in zip(starts, raw, strict=True)]
    byte_offsets = sorted(set(starts + ends))
    to_char = dict(zip(byte_offsets, _char_offsets(piece, byte_offsets), strict=True))
    for s, b_start, b_end in zip(raw, starts, ends, strict=True):
        ((node_name, node),) = s["stmt"].items()
        start, end = base + to_char[b_start], base + to_char[b_end]
        first = _skip_space_and_comments(text, start, end)
        no_tx, tx = _classify(node_name, node)
        statements.append(
            Statement(
                first,
                end,
                lines(first),
                node_name,
                no_tx,
                tx,
                _built_index(node_name, node),
                _dropped_indexes(node_name, node),
                _effect(node_name, node) if no_tx else None,
            )
        )


def _scan_fallback(text: str, error: str) -> Analysis:
    """Split on the C scanner's tokens: a top-level ';' ends a statement.

    (libpg_query's own scanner split drops statements that start with an unknown word,
    which is exactly what a file the parser rejects may contain.)
    """
    try:
        tokens = parser.scan(text)
    except parser.ParseError as exc:
        # Even the scanner failed (an unterminated quote or comment): one opaque statement.
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line = text.encode("utf-8")[:where].count(b"\n") + 1
        return Analysis(
            (Statement(0, len(text), 1, ""),),
            parsed=False,
            parse_error=str(exc.args[0]),
            unscannable_line=line,
        )
    groups: list[list] = [[]]
    depth = atomic = 0
    for i, tok in enumerate(tokens):
        name = tok.name
        if name == "ASCII_59" and depth == 0 and atomic == 0:  # ';'
            groups.append([])
            continue
        groups[-1].append(tok)
        if name == "ASCII_40":
            depth += 1
        elif name == "ASCII_41":
            depth = max(depth - 1, 0)
        elif name == "ATOMIC" and i and tokens[i - 1].name == "BEGIN_P":
            atomic += 1
        elif name == "END_P" and atomic:
            atomic -= 1
    statements = []
    lines = _Lines(text)
    for group in groups:
        if not group:
            continue
        names = [t.name for t in group[:8]]
        no_tx = tx = None
        if names[0] in _SCAN_TX and names[:2] != ["BEGIN_P", "ATOMIC"]:
            tx = _SCAN_TX[names[0]]
        elif "CONCURRENTLY" in names:
            no_tx = " ".join(
                text[t.start : t.end + 1].upper() for t in group[: names.index("CONCURRENTLY") + 1]
            )
        elif names[0] == "VACUUM":
            no_tx = "VACUUM"
        elif names[:2] in (["CREATE", "DATABASE"], ["DROP", "DATABASE"], ["ALTER", "SYSTEM_P"]):
            no_tx = " ".join(text[t.start : t.end + 1].upper() for t in group[:2])
        start, end = group[0].start, group[-1].end + 1
        statements.append(Statement(start, end, lines(start), "", no_tx, tx))
    return Analysis(tuple(statements), parsed=False, parse_error=error)


def blank_out(text: str, statements: tuple[Statement, ...]) -> str:
    """Return ``text`` with the given statements (and their ';') replaced by spaces.

    Line breaks are kept, so error positions and line numbers stay those of the file.
    """
    chars = list(text)
    for s in statements:
        end = s.end
        while end < len(text) and text[end] in " \t":
            end += 1
        if end < len(text) and text[end] == ";":
            end += 1
        for i in range(s.start, end):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


@dataclass(frozen=True)
class Prepared:
    """A file checked and ready to run: what to send, and how."""

    file: SqlFile
    analysis: Analysis
    body: str  # the text sent as one query (top-level BEGIN/COMMIT blanked out)
    own_transaction: bool  # the file had its own top-level BEGIN/COMMIT

    @property
    def no_transaction(self) -> bool:
        return self.file.directives.no_transaction


def prepare(sql_file: SqlFile) -> Prepared:
    """Check a file before anything runs; raise TreeError naming the file and line."""
    prepared, problems = examine(sql_file)
    if problems:
        raise TreeError(problems[0])
    assert prepared is not None, "examine() returns the prepared file whenever it finds no problem"
    return prepared


def examine(sql_file: SqlFile) -> tuple[Prepared | None, list[str]]:
    """Check a file as a run would; return it ready to send, or every reason it would be refused.

    Each reason is one paragraph naming the file and line and what to do. ``sqlmigrate_status``
    reports them for pending migrations, so nothing is found only when it runs.
    """
    try:  # a down file is read here for the first time (load_tree doesn't read down files)
        directives = sql_file.directives
    except TreeError as exc:  # a NUL byte, not UTF-8, a bad directive: one more reason to refuse it
        return None, [str(exc)]
    analysis = analysis_of(sql_file)
    rel = sql_file.relpath
    if analysis.unscannable_line is not None:
        # Sent as it is, the open quote would swallow nixmig's INSERT and COMMIT and the server
        # would report an error at a place that is not in the file.
        return None, [
            f"{rel}:{analysis.unscannable_line}: {analysis.parse_error}; PostgreSQL can't run this "
            "file. Close the quote, quoted identifier, dollar quote or /* comment that starts there."
        ]
    if not analysis.statements:
        if rel.endswith("_up.sql") and not (directives.empty or directives.allow_empty):
            return None, [
                f"{rel}: has no SQL statement, only comments (an unfilled sqlmigrate_new template?); "
                "write the migration's SQL, or delete the file. If it is meant to do nothing, write the "
                "line '-- nixmig:empty' at its top."
            ]
        return Prepared(sql_file, analysis, "", False), []
    if directives.empty:
        return None, [
            f"{rel}:{analysis.statements[0].line}: says '-- nixmig:empty' but has "
            f"{len(analysis.statements)} statement(s); remove the directive or the SQL."
        ]
    problems: list[str] = []
    if directives.no_transaction:
        if (
            not analysis.parsed
            and analysis.parse_error
            and len(analysis.statements) == 1
            and not analysis.statements[0].kind
        ):
            problems.append(
                f"{rel}: can't be split into statements ({analysis.parse_error}); a no-transaction "
                "file is sent one statement at a time, so fix the SQL first."
            )
        for s in analysis.transaction_control:
            problems.append(
                f"{rel}:{s.line}: has {s.transaction_control} in a '-- nixmig:no-transaction' file, "
                "where every statement runs on its own. Move the statements that need a transaction "
                "into a separate migration, or drop the directive."
            )
        return (None, problems) if problems else (Prepared(sql_file, analysis, sql_file.text, False), [])
    for s in analysis.no_transaction:
        problems.append(
            f"{rel}:{s.line}: {s.no_transaction} can't run inside a transaction, and nixmig runs this "
            "file in one. Add the line '-- nixmig:no-transaction' at the top of the file (each statement "
            "then runs on its own), or move the statement into a migration of its own with that line."
        )
    control = analysis.transaction_control
    for s in control:
        if s.transaction_control in ("ROLLBACK", "PREPARE"):
            problems.append(
                f"{rel}:{s.line}: a top-level {s.transaction_control} would end nixmig's transaction "
                "and leave the record out of step with the schema; remove it (nixmig already rolls the "
                "whole file back on any error)."
            )
    if problems:
        return None, problems
    own = [s for s in control if s.transaction_control in ("BEGIN", "COMMIT")]
    body = blank_out(sql_file.text, tuple(own)) if own else sql_file.text
    return Prepared(sql_file, analysis, body, bool(own)), []
