"""Read another migration tool's tree. Pure: no database, no Django settings.

One reader per tool turns a folder written in that tool's conventions into
``SourceMigration`` values: the version the tool records in its tracking table, the
name, the exact text of the up and down parts, and whether the tool runs each part
outside a transaction. Texts are kept byte for byte (they are decoded with
``surrogateescape``, so even a file that is not UTF-8 round-trips unchanged; nixmig's own
loader reports such a file afterwards).
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..exceptions import SourceTreeError

TOOLS = ("golang-migrate", "goose", "dbmate", "diesel", "flyway", "popx")


@dataclass(frozen=True)
class SourceMigration:
    """One migration of the other tool, as that tool sees it."""

    version: str  # as the tool writes it into its tracking table ("20240101000000", "1.1")
    label: str  # the version as spelled in the file name; goes into the nixmig name
    name: str  # the tool's name for it (may hold dots and spaces)
    up: str  # exact text of the up file (or up section), surrogateescape-decoded
    down: str | None  # exact text of the down file (or section); None: the tool has none
    up_origin: str  # where the up text comes from, relative to SRC ("x.sql, up section")
    down_origin: str | None = None
    up_no_transaction: bool = False  # the tool runs the up part outside a transaction
    down_no_transaction: bool = False
    why_no_transaction: str = ""  # the convention that said so, for the mapping
    order: tuple = ()  # the tool's run order
    checksum: int | None = None  # Flyway: its CRC32 of the script, compared with its history table


@dataclass(frozen=True)
class Source:
    """A whole tree of the other tool, in that tool's run order."""

    tool: str
    directory: Path
    migrations: tuple[SourceMigration, ...]
    notes: tuple[str, ...] = field(default=())  # files the tool itself would skip, and why

    def by_version(self) -> dict[str, SourceMigration]:
        return {m.version: m for m in self.migrations}


def read_source(tool: str, directory: str | os.PathLike) -> Source:
    """Read the tree of ``tool`` (one of TOOLS) under ``directory``."""
    if tool not in _READERS:
        raise SourceTreeError(f"Unknown source tool {tool!r}; use one of {', '.join(TOOLS)}.")
    root = Path(directory)
    if not root.is_dir():
        raise SourceTreeError(
            f"The {tool} migrations folder {root} does not exist or is not a folder; pass the "
            "folder that holds the tool's migration files."
        )
    migrations, notes, errors = _READERS[tool](root)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise SourceTreeError(
            f"The {tool} tree {root} can't be imported ({len(errors)} problem(s)); nothing was "
            f"written:\n{lines}"
        )
    if not migrations:
        raise SourceTreeError(
            f"Found no {tool} migrations in {root}; check the folder and --from ({_EXPECTED[tool]})."
        )
    migrations.sort(key=lambda m: m.order)
    return Source(tool, root, tuple(migrations), tuple(notes))


_EXPECTED = {
    "golang-migrate": "files named <version>_<title>.up.sql and <version>_<title>.down.sql",
    "goose": "files named <version>_<name>.sql with '-- +goose Up' / '-- +goose Down' sections",
    "dbmate": "files named <version>_<name>.sql with '-- migrate:up' / '-- migrate:down' sections",
    "diesel": "folders named <version>_<name> holding up.sql and down.sql",
    "flyway": "files named V<version>__<description>.sql (and U<version>__<description>.sql undo files)",
    "popx": "files named <version>_<name>[.<dialect>][.autocommit].up.sql / .down.sql",
}


def is_utf8(text: str) -> bool:
    """True when ``text`` came from valid UTF-8 (no bytes kept as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _sql_files(root: Path, recursive: bool) -> list[Path]:
    paths = root.rglob("*") if recursive else root.iterdir()
    hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
    return sorted(p for p in paths if p.is_file() and not hidden(p))


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


# -- golang-migrate -------------------------------------------------------------------------------
# github.com/golang-migrate/migrate source.DefaultParse: ^([0-9]+)_(.*)\.(down|up)\.(.*)$, one
# up and at most one down per version, paired by version; files that don't match are skipped.

_GOLANG_RE = re.compile(r"^([0-9]+)_(.*)\.(down|up)\.(.*)$", re.S)


def _golang_migrate(root: Path):
    ups: dict[int, Path] = {}
    downs: dict[int, Path] = {}
    up_names: dict[int, re.Match[str]] = {}  # the up file's name, parsed: its version digits and title
    notes: list[str] = []
    errors: list[str] = []
    for path in _sql_files(root, recursive=False):
        match = _GOLANG_RE.match(path.name)
        if not match:
            notes.append(
                f"{path.name}: skipped, as golang-migrate skips it (not <version>_<title>.up|down.<ext>)"
            )
            continue
        if match[4] != "sql":
            notes.append(f"{path.name}: skipped (not an .sql file)")
            continue
        version, direction = int(match[1]), match[3]
        target = ups if direction == "up" else downs
        if version in target:
            errors.append(
                f"{path.name} and {target[version].name} are both {direction} files of version {version}; "
                "golang-migrate refuses that too ('duplicate migration file'): remove one."
            )
            continue
        target[version] = path
        if direction == "up":
            up_names[version] = match
    migrations = []
    for version, up in ups.items():
        down = downs.get(version)
        title = up_names[version][2]
        text = _read(up)
        migrations.append(
            SourceMigration(
                str(version),
                up_names[version][1],
                title,
                text,
                _read(down) if down else None,
                up.name,
                down.name if down else None,
                order=(version,),
            )
        )
    for version, down in downs.items():
        if version not in ups:
            errors.append(
                f"{down.name}: a down file of version {version}, which has no up file; add the up file or "
                "delete this one."
            )
    return migrations, notes, errors


# -- goose -----------------------------------------------------------------------------------------
# pressly/goose: <version>_<name>.sql, version = the digits before the first '_'; annotations
# '-- +goose Up', '-- +goose Down', '-- +goose StatementBegin/End', '-- +goose NO TRANSACTION'
# (whole file), '-- +goose ENVSUB ON/OFF', matched case-insensitively.

_GOOSE_FILE_RE = re.compile(r"^([0-9]+)_(.*)\.(sql|go)\Z", re.S)
_GOOSE_ANNOTATION_RE = re.compile(r"^--\s*\+goose\s+(.*?)\s*$", re.I)


def _goose(root: Path):
    migrations, notes, errors = [], [], []
    seen: dict[int, str] = {}
    for path in _sql_files(root, recursive=False):
        match = _GOOSE_FILE_RE.match(path.name)
        if not match:
            if path.suffix in (".sql", ".go"):
                notes.append(f"{path.name}: skipped, as goose skips it (not <version>_<name>.sql)")
            continue
        if match[3] == "go":
            errors.append(
                f"{path.name}: is a Go migration, which nixmig can't run; rewrite it as SQL "
                f"({match[1]}_{match[2]}.sql) or apply it by other means, then import again."
            )
            continue
        version = int(match[1])
        if version in seen:
            errors.append(
                f"{path.name} and {seen[version]} share version {version}; goose refuses that too: "
                "renumber one."
            )
            continue
        seen[version] = path.name
        text = _read(path)
        up_at = down_at = None
        no_tx = False
        offset = 0
        for lineno, line in enumerate(text.splitlines(keepends=True), 1):
            annotation = _GOOSE_ANNOTATION_RE.match(line.rstrip("\r\n"))
            if annotation:
                word = " ".join(annotation[1].lower().split())
                if word == "up" and up_at is None:
                    up_at = offset
                elif word == "down" and down_at is None:
                    down_at = offset
                elif word == "no transaction":
                    no_tx = True
                elif word == "envsub on":
                    errors.append(
                        f"{path.name}:{lineno}: turns on goose's environment substitution (ENVSUB ON); "
                        "nixmig runs files as they are. Write the values into the file, drop the "
                        "annotation, and import again."
                    )
            offset += len(line)
        if up_at is None:
            errors.append(
                f"{path.name}: has no '-- +goose Up' line, which goose requires; add it above the up SQL."
            )
            continue
        if down_at is not None and down_at < up_at:
            errors.append(
                f"{path.name}:{_line_at(text, down_at)}: '-- +goose Down' comes before '-- +goose Up'; put "
                "the up section first."
            )
            continue
        up, down = (text, None) if down_at is None else (text[:down_at], text[down_at:])
        migrations.append(
            SourceMigration(
                str(version),
                match[1],
                match[2],
                up,
                down,
                f"{path.name} (up section)",
                f"{path.name} (down section)" if down is not None else None,
                no_tx,
                no_tx,
                "-- +goose NO TRANSACTION" if no_tx else "",
                order=(version,),
            )
        )
    return migrations, notes, errors


# -- dbmate ----------------------------------------------------------------------------------------
# amacneil/dbmate: ^(\d+).*\.sql$, version = the leading digits; '-- migrate:up [opts]' and
# '-- migrate:down [opts]' sections, option 'transaction:false' per section.

_DBMATE_FILE_RE = re.compile(r"^([0-9]+)(.*)\.sql\Z", re.S)
_DBMATE_UP_RE = re.compile(r"^--\s*migrate:up(?:[ \t]*\r?$|[ \t]+\S.*$)", re.M)
_DBMATE_DOWN_RE = re.compile(r"^--\s*migrate:down(?:[ \t]*\r?$|[ \t]+\S.*$)", re.M)


def _dbmate_no_transaction(directive_line: str) -> bool:
    options = dict(pair.split(":", 1) for pair in directive_line.split()[1:] if pair.count(":") == 1)
    return options.get("transaction") == "false"


def _dbmate(root: Path):
    migrations, notes, errors = [], [], []
    seen: dict[str, str] = {}
    for path in _sql_files(root, recursive=False):
        match = _DBMATE_FILE_RE.match(path.name)
        if not match:
            if path.suffix == ".sql":
                notes.append(
                    f"{path.name}: skipped, as dbmate skips it (the name does not start with a version)"
                )
            continue
        version = match[1]
        if version in seen:
            errors.append(
                f"{path.name} and {seen[version]} share version {version}; dbmate would record only one of "
                "them: renumber one."
            )
            continue
        seen[version] = path.name
        text = _read(path)
        up_m = _DBMATE_UP_RE.search(text)
        if up_m is None:
            errors.append(
                f"{path.name}: has no '-- migrate:up' line, which dbmate requires; add it above the up SQL."
            )
            continue
        down_m = _DBMATE_DOWN_RE.search(text)
        up_at, down_at = up_m.start(), down_m.start() if down_m else None
        if down_at is not None and down_at < up_at:
            errors.append(
                f"{path.name}:{_line_at(text, down_at)}: '-- migrate:down' comes before '-- migrate:up'; "
                "dbmate refuses that too: put the up section first."
            )
            continue
        up, down = (text, None) if down_at is None else (text[:down_at], text[down_at:])
        up_no_tx = _dbmate_no_transaction(up_m.group(0))
        down_no_tx = down_m is not None and _dbmate_no_transaction(down_m.group(0))
        why = " / ".join(
            x
            for x, on in (
                ("-- migrate:up transaction:false", up_no_tx),
                ("-- migrate:down transaction:false", down_no_tx),
            )
            if on
        )
        migrations.append(
            SourceMigration(
                version,
                version,
                match[2].lstrip("_"),
                up,
                down,
                f"{path.name} (up section)",
                f"{path.name} (down section)" if down is not None else None,
                up_no_tx,
                down_no_tx,
                why,
                order=(path.name,),
            )
        )  # dbmate runs files in file-name order
    return migrations, notes, errors


# -- Diesel ----------------------------------------------------------------------------------------
# diesel_migrations: a folder <version>_<name> per migration with up.sql, down.sql (optional since
# Diesel 2) and metadata.toml ('run_in_transaction = false'); version = the part before the first
# '_' without its dashes ("2019-02-26-002946" -> "20190226002946").

_DIESEL_DIR_RE = re.compile(r"^([0-9][0-9-]*)_(.+)$", re.S)
_DIESEL_NO_TX_RE = re.compile(r"^\s*run_in_transaction\s*=\s*false\s*(#.*)?$", re.M)


def _diesel(root: Path):
    migrations, notes, errors = [], [], []
    seen: dict[str, str] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = _DIESEL_DIR_RE.match(path.name)
        up = path / "up.sql"
        if not match or not up.is_file():
            notes.append(f"{path.name}/: skipped, as Diesel skips it (not <version>_<name>/ with an up.sql)")
            continue
        version = match[1].replace("-", "")
        if version in seen:
            errors.append(
                f"{path.name}/ and {seen[version]}/ share version {version}; Diesel refuses that too: "
                "rename one."
            )
            continue
        seen[version] = path.name
        down = path / "down.sql"
        metadata = path / "metadata.toml"
        no_tx = metadata.is_file() and bool(_DIESEL_NO_TX_RE.search(_read(metadata)))
        migrations.append(
            SourceMigration(
                version,
                match[1],
                match[2],
                _read(up),
                _read(down) if down.is_file() else None,
                f"{path.name}/up.sql",
                f"{path.name}/down.sql" if down.is_file() else None,
                no_tx,
                no_tx,
                "run_in_transaction = false (metadata.toml)" if no_tx else "",
                order=(version,),
            )
        )  # Diesel compares versions as strings
    return migrations, notes, errors


# -- Flyway ----------------------------------------------------------------------------------------
# V<version>__<description>.sql (version parts separated by '.' or '_'), U<version>__... undo
# files, R__... repeatable; a '<file>.conf' beside a script may say executeInTransaction=false.
# Flyway's checksum is CRC32 over the script's lines without line endings (BOM dropped), signed.

_FLYWAY_RE = re.compile(r"^([VUR])([0-9]+(?:[._][0-9]+)*)?__(.+)\.sql\Z", re.S)
_FLYWAY_NO_TX_RE = re.compile(r"^\s*executeInTransaction\s*=\s*false\s*$", re.M)
_FLYWAY_PLACEHOLDER_RE = re.compile(r"\$\{[^}\s]+\}")


def flyway_version_key(version: str) -> tuple[int, ...]:
    """Return Flyway's order of a version: numbers part by part, trailing zeros ignored."""
    parts = [int(p) for p in re.split(r"[._]", version)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def flyway_checksum(data: bytes) -> int:
    """Return Flyway's checksum of a script: CRC32 of its lines without line endings, as a signed int."""
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    crc = 0
    for line in re.split(r"\r\n|\r|\n", text):
        crc = zlib.crc32(line.encode("utf-8", "surrogateescape"), crc)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def _flyway_no_transaction(path: Path, text: str) -> str:
    conf = path.with_name(path.name + ".conf")
    if conf.is_file() and _FLYWAY_NO_TX_RE.search(_read(conf)):
        return f"executeInTransaction=false ({conf.name})"
    reason = _needs_no_transaction(text, all_statements=False)
    return f"{reason} (Flyway runs such a script outside a transaction)" if reason else ""


def _flyway(root: Path):
    migrations: list[SourceMigration] = []
    notes: list[str] = []
    errors: list[str] = []
    versioned: dict[tuple, tuple[str, str, Path]] = {}  # version key -> (version, description, path)
    undo: dict[tuple, Path] = {}
    for path in _sql_files(root, recursive=True):
        rel = _rel(root, path)
        if not path.name.endswith(".sql"):
            continue
        match = _FLYWAY_RE.match(path.name)
        if not match or (match[1] != "R" and not match[2]):
            errors.append(
                f"{rel}: is not a Flyway migration name (V<version>__<description>.sql); a callback or "
                "helper script has no place in a nixmig tree: move it out of the folder, or rename it."
            )
            continue
        if match[1] == "R":
            errors.append(
                f"{rel}: is a repeatable migration, which Flyway re-runs whenever it changes; nixmig runs "
                "each migration once. Turn it into a versioned migration (V<next>__...sql), or move it "
                "out of the folder and apply it by other means."
            )
            continue
        text = _read(path)
        placeholder = _FLYWAY_PLACEHOLDER_RE.search(text)
        if placeholder:
            errors.append(
                f"{rel}:{_line_at(text, placeholder.start())}: uses the Flyway placeholder "
                f"{placeholder[0]}, which nixmig does not replace; write the value into the file."
            )
            continue
        key = flyway_version_key(match[2])
        versioned_file = match[1] == "V"
        other = (versioned[key][2] if key in versioned else None) if versioned_file else undo.get(key)
        if other is not None:
            errors.append(
                f"{rel} and {_rel(root, other)} have the same version {match[2]}; Flyway refuses that too: "
                "renumber one."
            )
            continue
        if versioned_file:
            versioned[key] = (match[2], match[3], path)
        else:
            undo[key] = path
    for key, (label, description, path) in versioned.items():
        up = _read(path)
        down_path = undo.pop(key, None)
        down, why_down = None, ""
        if down_path is not None:
            down = _read(down_path)
            why_down = _flyway_no_transaction(down_path, down)
        why_up = _flyway_no_transaction(path, up)
        migrations.append(
            SourceMigration(
                label.replace("_", "."),
                label,
                description,
                up,
                down,
                _rel(root, path),
                _rel(root, down_path) if down_path else None,
                bool(why_up),
                bool(why_down),
                " / ".join(w for w in (why_up, why_down) if w),
                order=(key,),
                checksum=flyway_checksum(path.read_bytes()),
            )
        )
    for path in undo.values():
        errors.append(
            f"{_rel(root, path)}: an undo script of a version that has no V file; add the V file or "
            "delete this one."
        )
    return migrations, notes, errors


# -- popx (ory/x) ----------------------------------------------------------------------------------
# ^(\d+)_([^.]+)(\.[a-z0-9]+)?(\.autocommit)?\.(up|down)\.sql$: a dialect-specific file wins over
# one for all dialects; '.autocommit.' files run outside a transaction; files are rendered as Go
# templates; a file of only comments and blank lines is skipped (recorded, nothing run).

_POPX_RE = re.compile(r"^(\d+)_([^.]+)(\.[a-z0-9]+)?(\.autocommit)?\.(up|down)\.(sql|fizz)\Z", re.S)
_POSTGRES = {"postgres", "postgresql", "pg"}
_OTHER_DIALECTS = {"cockroach", "cockroachdb", "crdb", "mysql", "mariadb", "sqlite", "sqlite3"}


def _popx(root: Path):
    migrations, notes, errors = [], [], []
    found: dict[
        tuple[str, str], dict[str, tuple[Path, bool, str]]
    ] = {}  # (version, direction) -> dialect -> file
    for path in _sql_files(root, recursive=True):
        rel = _rel(root, path)
        match = _POPX_RE.match(path.name)
        if not match:
            if path.suffix in (".sql", ".fizz"):
                notes.append(
                    f"{rel}: skipped, as popx skips it (not <version>_<name>[.<dialect>].up|down.sql)"
                )
            continue
        dialect = (match[3] or ".all")[1:]
        autocommit = bool(match[4])
        if dialect == "autocommit" and not autocommit:  # <version>_<name>.autocommit.up.sql: all dialects
            dialect, autocommit = "all", True
        if dialect in _OTHER_DIALECTS:
            continue  # another database's file
        if dialect != "all" and dialect not in _POSTGRES:
            errors.append(
                f"{rel}: names the unknown dialect {dialect!r}; popx refuses it too: use postgres (or "
                "none, for all databases)."
            )
            continue
        if match[6] == "fizz":
            errors.append(
                f"{rel}: is a fizz migration, which nixmig can't run; render it to SQL with pop and "
                "import again."
            )
            continue
        slot = found.setdefault((match[1], match[5]), {})
        kind = "postgres" if dialect in _POSTGRES else "all"
        if kind in slot:
            errors.append(
                f"{rel} and {_rel(root, slot[kind][0])} are both {match[5]} files of version {match[1]} "
                f"for {kind} databases; remove one."
            )
            continue
        slot[kind] = (path, autocommit, match[2])
    for (version, direction), slot in sorted(found.items()):
        if direction != "up":
            continue
        up_path, up_auto, name = slot.get("postgres") or slot["all"]
        down_slot = found.get((version, "down"), {})
        down_path, down_auto, _ = down_slot.get("postgres") or down_slot.get("all") or (None, False, "")
        problem = False
        for file in (up_path, down_path):
            if file is not None:
                text = _read(file)
                if "{{" in text:
                    errors.append(
                        f"{_rel(root, file)}:{_line_at(text, text.index('{{'))}: popx renders this file as "
                        "a Go template; render the template into plain SQL and import again."
                    )
                    problem = True
        if problem:
            continue
        why = " / ".join(
            _rel(root, p) for p, auto in ((up_path, up_auto), (down_path, down_auto)) if p and auto
        )
        migrations.append(
            SourceMigration(
                version,
                version,
                name,
                _read(up_path),
                _read(down_path) if down_path else None,
                _rel(root, up_path),
                _rel(root, down_path) if down_path else None,
                up_auto,
                down_auto,
                f".autocommit. file name ({why})" if why else "",
                order=(version,),
            )
        )  # popx compares versions as strings
    for (version, direction), slot in found.items():
        if direction == "down" and (version, "up") not in found:
            path = (slot.get("postgres") or slot["all"])[0]
            notes.append(
                f"{_rel(root, path)}: skipped: a down file with no up file of version {version} for "
                "PostgreSQL, which popx never runs here either"
            )
    return migrations, notes, errors


def _needs_no_transaction(text: str, *, all_statements: bool) -> str:
    """Return the statement that makes the tool run ``text`` outside a transaction, or ''."""
    from ..sqltext import analyze  # pglast: imported only when a reader needs it

    if not is_utf8(text):
        return ""  # not UTF-8: nixmig's loader refuses the file, naming it
    analysis = analyze(text)
    flagged = analysis.no_transaction
    if not flagged or (all_statements and len(analysis.statements) != 1):
        return ""
    return flagged[0].no_transaction or ""  # set on every flagged statement


def _golang_migrate_with_no_transaction(root: Path):
    """golang-migrate sends a file as one query: a file of one such statement runs outside a transaction."""
    migrations, notes, errors = _golang_migrate(root)
    out = []
    for m in migrations:
        why_up = _needs_no_transaction(m.up, all_statements=True)
        why_down = _needs_no_transaction(m.down, all_statements=True) if m.down else ""
        why = "; ".join(f"{part}: one {w} statement" for part, w in (("up", why_up), ("down", why_down)) if w)
        out.append(
            SourceMigration(
                m.version,
                m.label,
                m.name,
                m.up,
                m.down,
                m.up_origin,
                m.down_origin,
                bool(why_up),
                bool(why_down),
                f"{why}; golang-migrate runs such a file outside a transaction" if why else "",
                m.order,
            )
        )
    return out, notes, errors


_READERS = {
    "golang-migrate": _golang_migrate_with_no_transaction,
    "goose": _goose,
    "dbmate": _dbmate,
    "diesel": _diesel,
    "flyway": _flyway,
    "popx": _popx,
}
