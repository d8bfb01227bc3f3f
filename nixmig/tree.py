"""Read and validate a migration tree on disk. Pure: no database, no Django settings.

A tree is ``<dir>/<module>/<NNN>_<name>_up.sql`` (and ``_down.sql``); a module may be
nested (``integrations/github``). Sequence numbers are one counter across modules and
migrations run in order of (number, module, name).
"""

from __future__ import annotations

import gc
import hashlib
import operator
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .exceptions import TreeError

FILE_RE = re.compile(r"^(?P<number>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*?)_(?P<direction>up|down)\.sql$")
MODULE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DIRECTIVE_RE = re.compile(r"^--\s*nixmig:\s*([A-Za-z_-]+)\s*(?:=\s*(\S+))?\s*$")
KNOWN_DIRECTIVES = {"no-transaction", "lock-timeout", "statement-timeout", "empty"}
FLAG_DIRECTIVES = {"no-transaction", "empty"}  # take no value
TIMEOUT_RE = re.compile(r"^[0-9]+\s*(us|ms|s|min|h|d)?$")
BOM = "\ufeff"

ERROR = "error"  # the tree can't be used: nothing runs
WARNING = "warning"  # something is wrong, but the runnable part is well defined
INFO = "info"  # worth knowing (an irreversible migration), not a defect of the tree


@dataclass(frozen=True)
class Problem:
    """Something wrong with the tree (or the tracking table) that a user should fix."""

    message: str
    file: str | None = None
    level: str = ERROR
    code: str = ""

    def as_dict(self) -> dict:
        data = {"level": self.level, "code": self.code, "message": self.message}
        if self.file is not None:
            data["file"] = self.file
        return data


@dataclass(frozen=True)
class Directives:
    """Options read from a file's leading ``-- nixmig:...`` comment lines."""

    no_transaction: bool = False
    lock_timeout: str | None = None
    empty: bool = False  # '-- nixmig:empty': an up file with no statement is an explicit no-op
    allow_empty: bool = False  # NIXMIG['ALLOW_EMPTY']: an up file with no statement is a no-op (not declared)
    statement_timeout: str | None = None


class SqlFile:
    """One ``_up.sql`` or ``_down.sql`` file, read and normalised.

    Built with ``text`` it is an up file read by ``load_tree``. Built without, it is a down file
    whose content is read on first use (a status, or an up, never needs it): ``text``,
    ``checksum`` and ``directives`` then raise a TreeError naming the file and line when the
    file turns out unusable (a NUL byte, not UTF-8, a bad directive), exactly as load_tree
    would have reported it.
    """

    __slots__ = ("_path", "relpath", "_text", "_checksum", "_directives", "analysis_cache")

    def __init__(
        self,
        path: str | os.PathLike,
        relpath: str,
        text: str | None = None,
        checksum: str | None = None,
        directives: Directives | None = None,
    ):
        self._path = (
            path  # a str from load_tree: a Path is built only when asked for (a third of a read's cost)
        )
        self.relpath = relpath
        self._text, self._checksum, self._directives = text, checksum, directives
        self.analysis_cache = None  # sqltext.analysis_of(): parsed once, whatever the number of databases
        if text is not None and directives is None:
            self._directives = Directives()

    @property
    def path(self) -> Path:
        if not isinstance(self._path, Path):
            self._path = Path(self._path)
        return self._path

    def _load(self) -> None:
        if self._text is not None:
            return
        loaded, problems = read_sql_file(os.fspath(self._path), self.relpath)
        errors = [p for p in problems if p.level == ERROR]
        if loaded is None or errors:
            raise TreeError(errors[0].message)
        self._text, self._checksum, self._directives = loaded._text, loaded._checksum, loaded._directives

    @property
    def text(self) -> str:
        self._load()
        assert self._text is not None
        return self._text

    @property
    def checksum(self) -> str:
        self._load()
        assert self._checksum is not None
        return self._checksum

    @property
    def directives(self) -> Directives:
        self._load()
        assert self._directives is not None
        return self._directives

    @property
    def is_loaded(self) -> bool:
        return self._text is not None

    @property
    def is_empty(self) -> bool:
        text = self._text if self._text is not None else self.text
        return not text or text.isspace()  # = not text.strip(), without copying the text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SqlFile):
            return NotImplemented
        return (os.fspath(self._path), self.relpath, self.text, self.checksum, self.directives) == (
            os.fspath(other._path),
            other.relpath,
            other.text,
            other.checksum,
            other.directives,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside; not a dict key

    def __repr__(self) -> str:
        return f"SqlFile({self.relpath!r}{'' if self.is_loaded else ', not read yet'})"


@dataclass(frozen=True)
class Migration:
    """An up file and, when it exists, its down file."""

    module: str
    number: int
    name: str  # "<NNN>_<name>", the bare name the Go migrator recorded
    up: SqlFile
    down: SqlFile | None

    @property
    def id(self) -> str:
        return f"{self.module}/{self.name}" if self.module else self.name

    @property
    def sort_key(self) -> tuple[int, str, str]:
        return (self.number, self.module, self.name)

    @property
    def checksum(self) -> str:
        return self.up.checksum

    @property
    def reversible(self) -> bool:
        return self.down is not None


@dataclass(frozen=True)
class Tree:
    """All migrations of a directory, in run order, and the problems found reading it."""

    directory: Path
    migrations: tuple[Migration, ...]
    problems: tuple[Problem, ...] = ()
    by_id: dict[str, Migration] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.by_id:
            self.by_id.update((m.id, m) for m in self.migrations)

    def get(self, migration_id: str) -> Migration | None:
        return self.by_id.get(migration_id.strip("/"))

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.level == ERROR)

    def raise_for_errors(self) -> None:
        """Raise TreeError listing every error of the tree, if there is any."""
        errors = self.errors
        if errors:
            lines = "\n".join(f"  - {p.message}" for p in errors)
            raise TreeError(
                f"The migration tree {self.directory} has {len(errors)} error(s); nothing was run:\n{lines}"
            )

    def highest_number(self) -> int:
        return max((m.number for m in self.migrations), default=0)


def normalise(data: bytes) -> bytes:
    """Return file bytes without a UTF-8 BOM and with LF line endings."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def checksum(data: bytes) -> str:
    """Return the checksum of file contents; line endings and a BOM don't count."""
    return hashlib.sha256(normalise(data)).hexdigest()


def line_of(text: str, index: int) -> int:
    """Return the 1-based line number of character ``index`` in ``text``."""
    return text.count("\n", 0, max(index, 0)) + 1


def parse_directives(text: str, relpath: str) -> tuple[Directives, list[Problem]]:
    """Read ``-- nixmig:...`` lines from the comment block at the top of a file."""
    values: dict[str, str | None] = {}
    problems: list[Problem] = []
    if "nixmig:" not in text:  # fast path: no directive and no line that could be one (most files)
        return Directives(), problems
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        if re.match(r"^--\s*nixmig:\s*allow\b", stripped):
            continue  # '-- nixmig:allow rule-id: reason' suppresses a lint finding: nixmig.lint reads it
        match = DIRECTIVE_RE.match(stripped)
        if not match:
            if re.match(r"^--\s*nixmig:", stripped):
                problems.append(
                    Problem(
                        f"{relpath}:{lineno}: can't read the directive {stripped!r}; write it as "
                        "'-- nixmig:no-transaction' or '-- nixmig:lock-timeout=5s'.",
                        relpath,
                        ERROR,
                        "bad_directive",
                    )
                )
            continue
        key, value = match.group(1).lower(), match.group(2)
        if key not in KNOWN_DIRECTIVES:
            problems.append(
                Problem(
                    f"{relpath}:{lineno}: unknown directive 'nixmig:{key}'; known ones are "
                    f"{', '.join(sorted(KNOWN_DIRECTIVES))}.",
                    relpath,
                    ERROR,
                    "bad_directive",
                )
            )
            continue
        if key in FLAG_DIRECTIVES and value is not None:
            problems.append(
                Problem(
                    f"{relpath}:{lineno}: 'nixmig:{key}' takes no value.", relpath, ERROR, "bad_directive"
                )
            )
            continue
        if key not in FLAG_DIRECTIVES and (value is None or not TIMEOUT_RE.match(value)):
            problems.append(
                Problem(
                    f"{relpath}:{lineno}: 'nixmig:{key}' needs a duration such as '5s', '500ms' or '2min'.",
                    relpath,
                    ERROR,
                    "bad_directive",
                )
            )
            continue
        values[key] = value
    return Directives(
        no_transaction="no-transaction" in values,
        lock_timeout=values.get("lock-timeout"),
        statement_timeout=values.get("statement-timeout"),
        empty="empty" in values,
    ), problems


def _read(path: str | os.PathLike[str]) -> bytes:
    """Return a file's bytes with the least per-file overhead: no buffered reader, no Path.

    The first read asks for 16 KiB, not more: CPython allocates the whole requested size before
    the read, and asking for 1 MiB (an mmap and page faults each time) made reading 10,000 small
    files four times slower. Reading goes on until the kernel says end of file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 16384)
        if not data:
            return data
        more = os.read(fd, 1 << 20 if len(data) == 16384 else 16384)
        if not more:
            return data
        chunks = [data, more]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_sql_file(path: str | os.PathLike, relpath: str) -> tuple[SqlFile | None, list[Problem]]:
    """Read one file; return it, or the problems that make it unusable."""
    try:
        data = _read(path)
    except OSError as exc:
        return None, [
            Problem(
                f"{relpath}: can't be read ({exc.strerror}); check its permissions.",
                relpath,
                ERROR,
                "unreadable",
            )
        ]
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        return None, [
            Problem(
                f"{relpath}:{line}: contains a NUL byte, which PostgreSQL can't accept in SQL; "
                "the file is probably binary or UTF-16: save it as UTF-8 text.",
                relpath,
                ERROR,
                "nul_byte",
            )
        ]
    normalised = normalise(data) if b"\r" in data or data.startswith(b"\xef\xbb\xbf") else data
    try:
        text = normalised.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = normalised.count(b"\n", 0, exc.start) + 1
        return None, [
            Problem(
                f"{relpath}:{line}: is not valid UTF-8 (byte 0x{normalised[exc.start]:02x} at offset {exc.start}); "
                "re-save the file as UTF-8.",
                relpath,
                ERROR,
                "not_utf8",
            )
        ]
    directives, problems = parse_directives(text, relpath)
    return SqlFile(path, relpath, text, hashlib.sha256(normalised).hexdigest(), directives), problems


_NAME = operator.attrgetter("name")


def _is_ignored(name: str) -> bool:
    # READMEs, editor backups (foo.sql~, #foo.sql#, foo.sql.swp, .foo.sql.swp) and hidden files.
    return name.startswith(".") or not name.lower().endswith(".sql")


def _unpaired_index(files: dict) -> dict[tuple[str, int, str], list[SqlFile]]:
    """Index the files that pair with nothing by (folder, number, direction), built once (linear)."""
    index: dict[tuple[str, int, str], list[SqlFile]] = {}
    for (module, bare, direction), (number, f) in files.items():
        other = "down" if direction == "up" else "up"
        if (module, bare, other) not in files:
            index.setdefault((module, number, direction), []).append(f)
    return index


def _unpaired_partner(index: dict, module: str, number: int, direction: str) -> SqlFile | None:
    """Return the one file of the other direction, same folder and number, that pairs with nothing."""
    found = index.get((module, number, "down" if direction == "up" else "up"), [])
    return found[0] if len(found) == 1 else None


def load_tree(directory: str | os.PathLike, *, allow_empty: bool = False) -> Tree:
    """Read every migration under ``directory`` and return them in run order.

    ``allow_empty`` accepts empty (and comment-only) up files as no-op migrations, as if each
    said ``-- nixmig:empty`` (for trees imported from tools that allow them).

    Raises TreeError only when the directory itself is unusable; problems with single
    files are collected in ``Tree.problems`` (call ``raise_for_errors()`` before running).
    """
    # Reading makes tens of thousands of objects and no garbage cycles; the collector's passes
    # over Django's heap meanwhile were a quarter of the time at 10,000 migrations.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_tree(directory, allow_empty)
    finally:
        if collecting:
            gc.enable()


def _load_tree(directory: str | os.PathLike, allow_empty: bool) -> Tree:
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise TreeError(
                f"The migrations path {root} is not a directory; pass --dir with the folder "
                "that holds your module folders."
            )
        raise TreeError(
            f"The migrations directory {root} does not exist; create it, set "
            "NIXMIG['MIGRATIONS_DIR'], or pass --dir."
        )
    real_root = root.resolve()
    problems: list[Problem] = []
    files: dict[tuple[str, str, str], tuple[int, SqlFile]] = {}

    # One os.scandir() per folder gives names, folder-ness and symbolic links (no stat per file).
    # Up files are read now (status compares their checksums); down files only when they run.
    pending_dirs = [(str(root), "")]
    while pending_dirs:
        dirpath, module = pending_dirs.pop()
        try:
            with os.scandir(dirpath) as listing:
                entries = sorted(listing, key=_NAME)
        except OSError:
            continue  # as os.walk: a folder that can't be listed is skipped
        subdirs, file_entries = [], []
        for entry in entries:
            d = entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                file_entries.append(entry)
                continue
            if (d.startswith(".") and set(d) != {"."}) or d == "__pycache__":
                continue  # hidden (.git, .idea); a name of dots only ('...') is refused below
            rel = f"{module}/{d}" if module else d
            if entry.is_symlink():
                problems.append(
                    Problem(
                        f"{rel}/: is a symbolic link to a folder; nixmig does not follow folder links. "
                        "Move the module folder into the migrations directory.",
                        rel + "/",
                        ERROR,
                        "symlink",
                    )
                )
                continue
            if not MODULE_SEGMENT_RE.match(d) or set(d) == {"."}:
                problems.append(
                    Problem(
                        f"{rel}/: is not a valid module folder name (use letters, digits, '_', '-' and '.', "
                        "no spaces); rename the folder.",
                        rel + "/",
                        ERROR,
                        "bad_module",
                    )
                )
                continue
            subdirs.append((entry.path, rel))
        pending_dirs.extend(reversed(subdirs))  # depth first, in name order, like os.walk

        prefix = f"{module}/" if module else ""
        for entry in file_entries:
            filename = entry.name
            match = FILE_RE.match(filename)
            if match is None and _is_ignored(filename):  # a name FILE_RE takes is never an ignored one
                continue
            full = entry.path
            relpath = prefix + filename
            if entry.is_symlink():
                target = Path(full).resolve()
                if not target.is_relative_to(real_root):
                    problems.append(
                        Problem(
                            f"{relpath}: is a symbolic link to {target}, outside the migrations directory "
                            f"{root}; copy the file in instead.",
                            relpath,
                            ERROR,
                            "symlink",
                        )
                    )
                    continue
                if not target.is_file():
                    problems.append(
                        Problem(
                            f"{relpath}: is a broken symbolic link; remove it or fix its target.",
                            relpath,
                            ERROR,
                            "symlink",
                        )
                    )
                    continue
            if match is None:
                problems.append(
                    Problem(
                        f"{relpath}: the name does not follow <NNN>_<name>_up.sql or <NNN>_<name>_down.sql "
                        "(digits, an underscore, a name of letters, digits, '_' or '-', then _up.sql or _down.sql); "
                        "rename it.",
                        relpath,
                        ERROR,
                        "bad_name",
                    )
                )
                continue
            direction = match["direction"]
            if direction == "up":
                sql_file, file_problems = read_sql_file(full, relpath)
                if file_problems:
                    problems.extend(file_problems)
                if sql_file is None:
                    continue
            else:
                sql_file = SqlFile(full, relpath)  # read when it runs (or is shown)
            bare = filename[:-7] if direction == "up" else filename[:-9]  # without _up.sql / _down.sql
            files[(module, bare, direction)] = (int(match["number"]), sql_file)

    migrations = []
    unpaired = _unpaired_index(files)
    for (module, bare, direction), (number, up) in files.items():
        if direction != "up":
            continue
        empty = up.is_empty
        if empty and allow_empty:
            up = SqlFile(up.path, up.relpath, up.text, up.checksum, Directives(allow_empty=True))
        elif empty:
            problems.append(
                Problem(
                    f"{up.relpath}: is empty; write the migration's SQL, or delete the file. If it is meant to do "
                    "nothing, write the line '-- nixmig:empty' in it.",
                    up.relpath,
                    ERROR,
                    "empty_up",
                )
            )
            continue
        elif allow_empty and not up.directives.empty:
            up = SqlFile(up.path, up.relpath, up.text, up.checksum, replace(up.directives, allow_empty=True))
        down_entry = files.get((module, bare, "down"))
        migration = Migration(module, number, bare, up, down_entry[1] if down_entry else None)
        migrations.append(migration)
        if down_entry is None:
            partner = _unpaired_partner(unpaired, module, number, "up")
            problems.append(
                Problem(
                    f"{up.relpath}: has no down file of the same name, so {migration.id} is irreversible; "
                    f"{partner.relpath} is probably its down file with a misspelt name: rename it to {bare}_down.sql."
                    if partner
                    else f"{up.relpath}: has no down file, so {migration.id} is irreversible "
                    f"(add {bare}_down.sql; an empty one is an explicit no-op rollback).",
                    up.relpath,
                    INFO,
                    "irreversible",
                )
            )
    for (module, bare, direction), (number, down) in files.items():
        if direction == "down" and (module, bare, "up") not in files:
            partner = _unpaired_partner(unpaired, module, number, "down")
            fix = (
                f"it is probably the down file of {partner.relpath}: rename it to "
                f"{partner.path.name[: -len('_up.sql')]}_down.sql, or delete it."
                if partner
                else "fix the name of one of the two, or delete it."
            )
            problems.append(
                Problem(
                    f"{down.relpath}: matches no up file (expected {bare}_up.sql beside it); {fix}",
                    down.relpath,
                    WARNING,
                    "orphan_down",
                )
            )

    migrations.sort(key=lambda m: m.sort_key)
    problems.sort(key=lambda p: ({ERROR: 0, WARNING: 1, INFO: 2}[p.level], p.file or ""))
    return Tree(root, tuple(migrations), tuple(problems))


def load_migration(
    directory: str | os.PathLike, module: str, name: str, *, allow_empty: bool = False
) -> Migration | None:
    """Read one migration (``<module>/<name>_up.sql`` and its down file) without reading the whole tree.

    Returns what ``load_tree(directory).get(f"{module}/{name}")`` would, or None where load_tree
    would have no such migration (missing or unusable up file, a hidden, linked or misnamed
    folder, a link out of the directory). The admin's detail page shows one migration this way:
    its time does not grow with the tree.
    """
    root = Path(directory)
    match = FILE_RE.match(f"{name}_up.sql")
    segments = module.split("/") if module else []
    if match is None or not root.is_dir():
        return None
    folder = str(root)
    for segment in segments:
        if (
            not MODULE_SEGMENT_RE.match(segment)
            or set(segment) == {"."}
            or segment.startswith(".")
            or segment == "__pycache__"
        ):
            return None
        folder = os.path.join(folder, segment)
        if os.path.islink(folder) or not os.path.isdir(folder):
            return None
    prefix = f"{module}/" if module else ""
    real_root = root.resolve()

    def usable(path: str) -> bool:
        if not os.path.islink(path):
            return os.path.isfile(path)
        target = Path(path).resolve()
        return target.is_relative_to(real_root) and target.is_file()

    up_path = os.path.join(folder, f"{name}_up.sql")
    if not usable(up_path):
        return None
    up, problems = read_sql_file(up_path, f"{prefix}{name}_up.sql")
    if up is None or any(p.level == ERROR for p in problems):
        return None
    if up.is_empty:
        if not allow_empty:
            return None
        up = SqlFile(up.path, up.relpath, up.text, up.checksum, Directives(allow_empty=True))
    elif allow_empty and not up.directives.empty:
        up = SqlFile(up.path, up.relpath, up.text, up.checksum, replace(up.directives, allow_empty=True))
    down_path = os.path.join(folder, f"{name}_down.sql")
    down = SqlFile(down_path, f"{prefix}{name}_down.sql") if usable(down_path) else None
    return Migration(module, int(match["number"]), name, up, down)
