"""Read and validate a migration tree on disk. Pure: no database, no Django settings.

A tree is ``<dir>/<module>/<NNN>_<name>_up.sql`` (and ``_down.sql``); a module may be
nested (``integrations/github``). Sequence numbers are one counter across modules and
migrations run in order of (number, module, name).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import operator
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import TreeError

if TYPE_CHECKING:
    from .sqltext import Analysis  # sqltext imports this module

# Names are matched whole (fullmatch, and \Z where '$' would also match before a final line break).
FILE_RE = re.compile(r"(?P<number>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*?)_(?P<direction>up|down)\.sql\Z")
MODULE_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
DIRECTIVE_RE = re.compile(r"^--\s*nixmig:\s*([A-Za-z_-]+)\s*(?:=\s*(\S+))?\s*$")
KNOWN_DIRECTIVES = {"no-transaction", "lock-timeout", "statement-timeout", "empty"}
FLAG_DIRECTIVES = {"no-transaction", "empty"}  # take no value
MAX_FILE_BYTES = 64 * 1024 * 1024  # NIXMIG['MAX_FILE_BYTES']: larger migration files are refused
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

    Built with ``text`` it is an up file read by ``load_tree``; built with ``checksum`` and
    ``directives`` but no text, an up file the checksum cache vouched for (its text is read when
    the migration runs or is shown). Built with none of them, it is a down file whose content
    is read on first use (a status, or an up, never needs it): ``text``,
    ``checksum`` and ``directives`` then raise a TreeError naming the file and line when the
    file turns out unusable (a NUL byte, not UTF-8, a bad directive), exactly as load_tree
    would have reported it.
    """

    __slots__ = ("_path", "relpath", "_text", "_checksum", "_directives", "analysis_cache", "max_bytes")

    def __init__(
        self,
        path: str | os.PathLike,
        relpath: str,
        text: str | None = None,
        checksum: str | None = None,
        directives: Directives | None = None,
        max_bytes: int | None = MAX_FILE_BYTES,
    ):
        self.max_bytes = max_bytes  # the size limit of a read on first use
        self._path = (
            path  # a str from load_tree: a Path is built only when asked for (a third of a read's cost)
        )
        self.relpath = relpath
        self._text, self._checksum, self._directives = text, checksum, directives
        self.analysis_cache: Analysis | None = (
            None  # sqltext.analysis_of(): parsed once, whatever the number of databases
        )
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
        loaded, problems = read_sql_file(os.fspath(self._path), self.relpath, self.max_bytes)
        errors = [p for p in problems if p.level == ERROR]
        if loaded is None or errors:
            raise TreeError(errors[0].message)
        directives = loaded._directives
        if self._directives is not None and self._directives.allow_empty and directives is not None:
            directives = replace(directives, allow_empty=True)  # NIXMIG['ALLOW_EMPTY'] is not in the file
        # The text read now wins over a checksum from the cache: the file may have changed since.
        self._text, self._checksum, self._directives = loaded._text, loaded._checksum, directives

    @property
    def text(self) -> str:
        self._load()
        assert self._text is not None
        return self._text

    @property
    def checksum(self) -> str:
        if self._checksum is None:  # known without the text for an up file the checksum cache vouched for
            self._load()
        assert self._checksum is not None
        return self._checksum

    @property
    def directives(self) -> Directives:
        if self._directives is None:
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


@dataclass(frozen=True, init=False)
class Migration:
    """An up file and, when it exists, its down file."""

    module: str
    number: int
    name: str  # "<NNN>_<name>", the bare name the Go migrator recorded
    up: SqlFile
    down: SqlFile | None

    def __init__(self, module: str, number: int, name: str, up: SqlFile, down: SqlFile | None) -> None:
        # Frozen, but filled in one step (a frozen dataclass's own __init__ is four times slower).
        self.__dict__.update(module=module, number=number, name=name, up=up, down=down)

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
    files_read: int = field(
        default=0, compare=False, repr=False
    )  # up files read (not vouched for by the cache)

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


class FileRefused(Exception):
    """A path that is not a regular file, or a file over the size limit (its reason)."""


_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _read(path: str | os.PathLike[str], max_bytes: int | None = MAX_FILE_BYTES) -> bytes:
    """Return a file's bytes with the least per-file overhead: no buffered reader, no Path.

    Only a regular file is read: the open doesn't block (a FIFO would wait for a writer
    forever) and ``fstat`` of the open file refuses FIFOs, sockets and devices, as well as
    files over ``max_bytes``, with FileRefused.

    The first read asks for 16 KiB, not more: CPython allocates the whole requested size before
    the read, and asking for 1 MiB (an mmap and page faults each time) made reading 10,000 small
    files four times slower. Reading goes on until the kernel says end of file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise exc from None
        if not stat.S_ISREG(mode):  # a socket can't be opened at all (ENXIO)
            raise FileRefused(f"is {_kind(mode)}, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileRefused(_too_large(st.st_size, max_bytes))
        data = os.read(fd, 16384)
        if not data:
            return data
        more = os.read(fd, 1 << 20 if len(data) == 16384 else 16384)
        if not more:
            return data
        chunks = [data, more]
        size = len(data) + len(more)
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:  # it grew while being read
                raise FileRefused(_too_large(size, max_bytes))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(size: int, limit: int) -> str:
    return (
        f"is {size:,} bytes, over NIXMIG['MAX_FILE_BYTES'] ({limit:,} bytes); split it into several "
        "migrations, or raise the setting if a file this large is intended"
    )


def printable(text: str) -> str:
    """Return ``text`` with control characters escaped ('003_b_up.sql\\n'), for messages."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def read_sql_file(
    path: str | os.PathLike, relpath: str, max_bytes: int | None = MAX_FILE_BYTES
) -> tuple[SqlFile | None, list[Problem]]:
    """Read one file; return it, or the problems that make it unusable."""
    try:
        data = _read(path, max_bytes)
    except FileRefused as exc:
        return None, [
            Problem(f"{relpath}: {exc}; nixmig reads only regular files.", relpath, ERROR, "not_regular")
            if "regular file" in str(exc)
            else Problem(f"{relpath}: {exc}.", relpath, ERROR, "too_large")
        ]
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


RACY_NS = 2_000_000_000  # see ChecksumCache
_PARSED: dict[str, tuple[str, dict, dict | None]] = {}  # cache file -> (its version, files, snapshot)
_stat = os.stat  # what the cache keys on (a test stands in a file system with coarse timestamps)
CACHE_FORMAT = 1


class ChecksumCache:
    """Checksums and directives of up files, kept between runs so an unchanged file is not read again.

    An entry is used only while the file's size, modification time, change time and inode (all in
    nanoseconds where they are times) are exactly those stat() gave when the file was read: any
    write, rename onto it, ``touch``, ``chmod`` or replacement changes at least one of them (an edit
    that sets the modification time back still changes the change time, which no user can set).

    As git's index does with "racily clean" entries, a file whose times were less than RACY_NS
    before the read began is not vouched for: a timestamp has a granularity (a kernel tick, two
    seconds on FAT), so an edit made within it after the read could leave every time unchanged. Such
    a file is read again on the next run, and vouched for once its times are old enough. What the
    cache can't see is an edit that keeps size and inode and sets both times back, which takes
    setting the system clock back or writing to the disk device; and times from a server whose
    clock is more than RACY_NS behind or ahead (a network file system) void the margin.

    The cache is one JSON file per migrations directory, ``nixmig-checksums-<hash of the path>.json``
    in ``folder``, written whole (a temporary file renamed over it) when an entry changed. It is
    trusted as the directory is: keep it where only those who may write migrations can write. A
    missing, unreadable or malformed file is ignored, and a folder that can't be written (or has no
    write permission bit, root included) is never written to.
    """

    def __init__(self, folder: str | os.PathLike, directory: Path, max_file_bytes: int | None = None):
        self.started = time.time_ns()  # before any stat(): the racy margin counts from here
        self.version: str | None = None  # names the cache file as read (its path, size, times, inode)
        self.folder = os.fspath(folder)
        self.max_file_bytes = max_file_bytes  # a bigger file is never vouched for: reading it refuses it
        self.directory = str(directory)
        digest = hashlib.sha256(self.directory.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.path = os.path.join(self.folder, f"nixmig-checksums-{digest}.json")
        self.entries, self.snapshot = self._read()
        self.seen: dict[str, list] = {}
        self.new_snapshot: dict | None = None
        self.dirty = False

    def _read(self) -> tuple[dict[str, list], dict | None]:
        try:
            st = os.stat(self.path)
        except OSError:
            return {}, None
        self.version = f"{self.path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
        parsed = _PARSED.get(self.path)
        if parsed is not None and parsed[0] == self.version:  # a long-lived process (the admin) reads it once
            return parsed[1], parsed[2]
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}, None
        if not (
            isinstance(data, dict)
            and data.get("format") == CACHE_FORMAT
            and data.get("directory") == self.directory
            and isinstance(data.get("files"), dict)
        ):
            return {}, None
        snapshot = data.get("tree")
        files, snapshot = data["files"], snapshot if isinstance(snapshot, dict) else None
        if len(_PARSED) >= 8:
            _PARSED.clear()
        _PARSED[self.path] = (self.version, files, snapshot)
        return files, snapshot

    def _fitting_snapshot(self, allow_empty: bool) -> dict | None:
        """The last full read's snapshot, if it was taken under the same settings."""
        snap = self.snapshot
        if (
            snap is None
            or snap.get("allow_empty") is not allow_empty
            or snap.get("max") != self.max_file_bytes
        ):
            return None
        return snap

    def unchanged(self, root: Path, allow_empty: bool) -> bool:
        """True when no folder and no up file changed since the last full read (stat() only)."""
        snap = self._fitting_snapshot(allow_empty)
        if snap is None:
            return False
        base = str(root)
        stat_ = _stat
        try:
            if not _folders_unchanged(base, snap):
                return False
            files = self.entries
            for module, _number, name, _has_down in snap["migrations"]:
                up_rel = f"{module}/{name}_up.sql" if module else f"{name}_up.sql"
                size, mtime, ctime, ino = files[up_rel][:4]
                st = stat_(f"{base}/{up_rel}")
                if (
                    st.st_size != size
                    or st.st_mtime_ns != mtime
                    or st.st_ctime_ns != ctime
                    or st.st_ino != ino
                    or not stat.S_ISREG(st.st_mode)
                ):
                    return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
        return True

    def folder_key(self, path: str) -> list[int] | None:
        """Return a folder's (mtime, ctime, inode) taken before it is listed, or None when too recent to trust."""
        try:
            st = _stat(path)
        except OSError:
            return None
        if max(st.st_mtime_ns, st.st_ctime_ns) > self.started - RACY_NS:
            return None
        return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def tree(self, root: Path, allow_empty: bool) -> Tree | None:
        """Return the tree as the last full read left it, if no folder and no up file changed since.

        A folder's times change whenever a file is added, removed or renamed in it; an up file's
        whenever it is written. Anything else (a file, a folder or a setting changed, a snapshot
        that doesn't fit) returns None, and the tree is read again (through the file entries).
        """
        snap = self._fitting_snapshot(allow_empty)
        if snap is None:
            return None
        base = str(root)
        stat_ = _stat
        try:
            if not _folders_unchanged(base, snap):
                return None
            files = self.entries
            seen: dict[str, list] = {}
            migrations = []
            shared: dict[tuple, Directives] = {}  # immutable: one object per distinct set of directives
            for module, number, name, has_down in snap["migrations"]:
                stem = f"{module}/{name}" if module else name
                up_rel = f"{stem}_up.sql"
                entry = files[up_rel]
                up_path = f"{base}/{up_rel}"
                st = stat_(up_path)
                size, mtime, ctime, ino, checksum, no_transaction, lock_timeout, statement_timeout = entry
                if (
                    st.st_size != size
                    or st.st_mtime_ns != mtime
                    or st.st_ctime_ns != ctime
                    or st.st_ino != ino
                    or not stat.S_ISREG(st.st_mode)
                    or len(checksum) != 64
                ):
                    return None
                seen[up_rel] = entry
                options = (no_transaction, lock_timeout, statement_timeout)
                directives = shared.get(options)
                if directives is None:
                    directives = shared[options] = Directives(
                        no_transaction=no_transaction is True,
                        lock_timeout=lock_timeout if isinstance(lock_timeout, str) else None,
                        allow_empty=allow_empty,
                        statement_timeout=statement_timeout if isinstance(statement_timeout, str) else None,
                    )
                up = SqlFile(up_path, up_rel, None, checksum, directives)
                down = SqlFile(f"{base}/{stem}_down.sql", f"{stem}_down.sql") if has_down else None
                migrations.append(Migration(module, number, name, up, down))
            problems = tuple(Problem(m, f, lv, c) for m, f, lv, c in snap["problems"])
        except (OSError, KeyError, TypeError, ValueError):
            return None
        self.seen = seen
        self.new_snapshot = snap
        return Tree(root, tuple(migrations), problems)

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def lookup(self, relpath: str, path: str) -> tuple[SqlFile | None, os.stat_result | None]:
        """Return the up file at ``path`` from the cache, unread, or None when it must be read.

        The second value is the file's stat() taken now, before it is read: ``store`` keeps that
        one, so an edit between this stat and the read shows as changed times on the next run.
        """
        try:
            st = _stat(path)
        except OSError:
            return None, None
        entry = self.entries.get(relpath)
        if entry is None:
            return None, st
        if (
            not isinstance(entry, list)
            or len(entry) != 8
            or entry[:4] != self._key(st)
            or not stat.S_ISREG(st.st_mode)
            or (self.max_file_bytes is not None and st.st_size > self.max_file_bytes)
        ):
            return None, st
        checksum, no_transaction, lock_timeout, statement_timeout = entry[4:]
        if not (isinstance(checksum, str) and len(checksum) == 64):
            return None, st
        self.seen[relpath] = entry
        directives = Directives(
            no_transaction=bool(no_transaction),
            lock_timeout=lock_timeout if isinstance(lock_timeout, str) else None,
            statement_timeout=statement_timeout if isinstance(statement_timeout, str) else None,
        )
        return SqlFile(path, relpath, None, checksum, directives), st

    def store(self, relpath: str, sql_file: SqlFile, st: os.stat_result) -> None:
        """Vouch for a file just read (``st`` from before the read), unless its times are in the racy margin."""
        if sql_file.is_empty or sql_file.directives.empty:
            return
        if not stat.S_ISREG(st.st_mode) or max(st.st_mtime_ns, st.st_ctime_ns) > self.started - RACY_NS:
            return  # too recent to vouch for: read again next time
        d = sql_file.directives
        self.seen[relpath] = [
            *self._key(st),
            sql_file.checksum,
            d.no_transaction,
            d.lock_timeout,
            d.statement_timeout,
        ]
        self.dirty = True

    def save(self) -> None:
        """Write the entries of this read (files gone since are dropped), if anything changed."""
        if not self.dirty and len(self.seen) == len(self.entries) and self.new_snapshot == self.snapshot:
            return
        try:
            parent = os.path.dirname(self.folder)
            if not os.path.isdir(self.folder):
                if not os.stat(parent).st_mode & 0o222:
                    return  # a read-only tree (no write bit): leave it as it is, root included
                os.makedirs(self.folder, exist_ok=True)
            elif not os.stat(self.folder).st_mode & 0o222:
                return
            data = {
                "format": CACHE_FORMAT,
                "directory": self.directory,
                "files": self.seen,
                "tree": self.new_snapshot,
            }
            fd, tmp = tempfile.mkstemp(prefix=".nixmig-checksums-", dir=self.folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, separators=(",", ":"))
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            pass  # a cache that can't be written only costs the next run its reads


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


def load_tree(
    directory: str | os.PathLike,
    *,
    allow_empty: bool = False,
    unique_numbers: bool = False,
    checksum_cache: str | os.PathLike | None = None,
    max_file_bytes: int | None = MAX_FILE_BYTES,
) -> Tree:
    """Read every migration under ``directory`` and return them in run order.

    ``allow_empty`` accepts empty (and comment-only) up files as no-op migrations, as if each
    said ``-- nixmig:empty`` (for trees imported from tools that allow them). Migrations that share
    a number are a warning, or an error with ``unique_numbers``.

    ``checksum_cache`` names a folder for the checksum cache (see ChecksumCache): an up file whose
    size, modification and change times and inode are those it had when the cache last read it
    (and that had not changed for RACY_NS before that read) is not read again.

    Only regular files are read (a FIFO, socket or device is a problem naming it), and none over
    ``max_file_bytes`` (None: no limit).

    Raises TreeError only when the directory itself is unusable; problems with single
    files are collected in ``Tree.problems`` (call ``raise_for_errors()`` before running).
    """
    # Reading makes tens of thousands of objects and no garbage cycles; the collector's passes
    # over Django's heap meanwhile were a quarter of the time at 10,000 migrations.
    with paused_gc():
        tree = _load_tree(directory, allow_empty, checksum_cache, max_file_bytes)
    if max_file_bytes != MAX_FILE_BYTES:  # files read later (down files, cached up files) keep the limit
        for m in tree.migrations:
            for f in (m.up, m.down):
                if f is not None:
                    f.max_bytes = max_file_bytes
    shared = shared_numbers(tree.migrations, ERROR if unique_numbers else WARNING)
    if shared:
        problems = sorted(tree.problems + tuple(shared), key=_problem_order)
        return replace(tree, problems=tuple(problems))
    return tree


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the garbage collector while building many objects that form no cycles (then resume it)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _problem_order(problem: Problem) -> tuple[int, str]:
    return {ERROR: 0, WARNING: 1, INFO: 2}[problem.level], problem.file or ""


def shared_numbers(migrations: tuple[Migration, ...], level: str = WARNING) -> list[Problem]:
    """Return one problem per number that several migrations (in run order) share, naming their files."""
    problems = []
    highest = max((m.number for m in migrations), default=0)
    i = 0
    while i < len(migrations):
        j = i + 1
        while j < len(migrations) and migrations[j].number == migrations[i].number:
            j += 1
        if j - i > 1:
            group = migrations[i:j]
            files = [m.up.relpath for m in group]
            named = f"{', '.join(files[:-1])} and {files[-1]}"
            digits = group[0].name.split("_", 1)[0]
            following = f"{highest + 1:0{max(3, len(digits))}d}"
            problems.append(
                Problem(
                    f"{named} share the number {digits}, so they run in the order of module and name "
                    f"({group[0].id} first), whatever order they were written in. If they come from two "
                    f"branches, renumber the later one after the highest number ({following}) with "
                    "'python manage.py sqlmigrate_new' and move its SQL there; NIXMIG['UNIQUE_NUMBERS'] = True "
                    "refuses shared numbers.",
                    files[0],
                    level,
                    "duplicate_number",
                )
            )
        i = j
    return problems


def _load_tree(
    directory: str | os.PathLike,
    allow_empty: bool,
    checksum_cache: str | os.PathLike | None,
    max_file_bytes: int | None = MAX_FILE_BYTES,
) -> Tree:
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
    cache = ChecksumCache(checksum_cache, real_root, max_file_bytes) if checksum_cache is not None else None
    if cache is not None:
        unchanged = cache.tree(root, allow_empty)
        if unchanged is not None:
            cache.save()
            return unchanged
    files_read = 0
    folders: list[list] = []  # (folder, mtime, ctime, inode) of each folder read, for the cache's snapshot
    snapshot = cache is not None  # False once anything is seen that a snapshot can't vouch for

    # One os.scandir() per folder gives names, folder-ness and symbolic links (no stat per file).
    # Up files are read now (status compares their checksums); down files only when they run.
    pending_dirs = [(str(root), "")]
    while pending_dirs:
        dirpath, module = pending_dirs.pop()
        if snapshot and cache is not None:
            key = cache.folder_key(dirpath)  # before listing it: a change during the listing shows next time
            if key is None:
                snapshot = False
            else:
                folders.append([module, *key])
        try:
            with os.scandir(dirpath) as listing:
                entries = sorted(listing, key=_NAME)
        except OSError:
            snapshot = False
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
                snapshot = False
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
            if not MODULE_SEGMENT_RE.fullmatch(d) or set(d) == {"."}:
                problems.append(
                    Problem(
                        f"{printable(rel)}/: is not a valid module folder name (use letters, digits, '_', '-' "
                        "and '.', no spaces or control characters); rename the folder.",
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
            match = FILE_RE.fullmatch(filename)
            if (
                match is None and _is_ignored(filename) and filename.isprintable()
            ):  # a name FILE_RE takes is never an ignored one
                continue
            full = entry.path
            relpath = prefix + filename
            if entry.is_symlink():
                snapshot = False  # its target may change without this folder changing
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
                        f"{printable(relpath)}: the name does not follow <NNN>_<name>_up.sql or <NNN>_<name>_down.sql "
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
                found, before = cache.lookup(relpath, full) if cache is not None else (None, None)
                if found is not None:
                    sql_file = found
                else:
                    files_read += 1
                    read, file_problems = read_sql_file(full, relpath, max_file_bytes)
                    if file_problems:
                        problems.extend(file_problems)
                    if read is None:
                        continue
                    sql_file = read
                    if cache is not None and before is not None and not file_problems:
                        cache.store(relpath, sql_file, before)
            else:
                sql_file = SqlFile(full, relpath)  # read when it runs (or is shown)
            bare = filename[:-7] if direction == "up" else filename[:-9]  # without _up.sql / _down.sql
            files[(module, bare, direction)] = (int(match["number"]), sql_file)

    migrations = []
    unpaired = _unpaired_index(files)
    for (module, bare, direction), (number, up) in files.items():
        if direction != "up":
            continue
        empty = up.is_loaded and up.is_empty  # the cache vouches only for files with a statement
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
            up = SqlFile(
                up._path, up.relpath, up._text, up.checksum, replace(up.directives, allow_empty=True)
            )
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
    if cache is not None:
        if (
            snapshot
            and not any(p.level == ERROR for p in problems)
            and all(m.up.relpath in cache.seen for m in migrations)
        ):
            cache.new_snapshot = {
                "allow_empty": allow_empty,
                "max": max_file_bytes,  # the limit every file of the snapshot was read under
                "folders": folders,
                "migrations": [[m.module, m.number, m.name, m.down is not None] for m in migrations],
                "problems": [[p.message, p.file, p.level, p.code] for p in problems],
            }
        cache.save()
    return Tree(root, tuple(migrations), tuple(problems), files_read=files_read)


def unchanged_tree_key(
    directory: str | os.PathLike,
    *,
    allow_empty: bool = False,
    checksum_cache: str | os.PathLike | None,
    max_file_bytes: int | None = MAX_FILE_BYTES,
) -> str | None:
    """Return a key naming the tree as the checksum cache's last full read saw it, or None.

    Not None only when that read left a snapshot and no folder or up file changed since (stat()
    only: no file is read and no object is built per migration); equal keys mean equal trees. The
    admin keeps its summary of the tree under this key.
    """
    if checksum_cache is None:
        return None
    root = Path(directory)
    try:
        cache = ChecksumCache(checksum_cache, root.resolve(), max_file_bytes)
    except OSError:
        return None
    if cache.version is None or not cache.unchanged(root, allow_empty):
        return None
    return f"{cache.version}:{allow_empty}:{max_file_bytes}"


def load_migration(
    directory: str | os.PathLike,
    module: str,
    name: str,
    *,
    allow_empty: bool = False,
    max_file_bytes: int | None = MAX_FILE_BYTES,
) -> Migration | None:
    """Read one migration (``<module>/<name>_up.sql`` and its down file) without reading the whole tree.

    Returns what ``load_tree(directory).get(f"{module}/{name}")`` would, or None where load_tree
    would have no such migration (missing or unusable up file, a hidden, linked or misnamed
    folder, a link out of the directory). The admin's detail page shows one migration this way:
    its time does not grow with the tree.
    """
    root = Path(directory)
    match = FILE_RE.fullmatch(f"{name}_up.sql")
    segments = module.split("/") if module else []
    if match is None or not root.is_dir():
        return None
    folder = str(root)
    for segment in segments:
        if (
            not MODULE_SEGMENT_RE.fullmatch(segment)
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
    up, problems = read_sql_file(up_path, f"{prefix}{name}_up.sql", max_file_bytes)
    if up is None or any(p.level == ERROR for p in problems):
        return None
    if up.is_empty:
        if not allow_empty:
            return None
        up = SqlFile(up.path, up.relpath, up.text, up.checksum, Directives(allow_empty=True))
    elif allow_empty and not up.directives.empty:
        up = SqlFile(up.path, up.relpath, up.text, up.checksum, replace(up.directives, allow_empty=True))
    down_path = os.path.join(folder, f"{name}_down.sql")
    down = (
        SqlFile(down_path, f"{prefix}{name}_down.sql", max_bytes=max_file_bytes)
        if usable(down_path)
        else None
    )
    return Migration(module, int(match["number"]), name, up, down)


def digest(tree: Tree) -> str:
    """Return a short hash of the tree's migration ids and file checksums (up and down).

    Two trees with the same digest run the same SQL: a Celery worker compares it with the one
    the coordinator planned with before it touches a target.
    """
    h = hashlib.sha256()
    for m in tree.migrations:
        try:
            down = m.down.checksum if m.down is not None else "-"
        except TreeError:
            down = "unreadable"
        h.update(f"{m.id}\0{m.up.checksum}\0{down}\n".encode())
    return h.hexdigest()[:16]


def _folders_unchanged(base: str, snap: dict) -> bool:
    """True when every folder of the snapshot has the times and inode it had (stat() only; OSError passes up)."""
    for folder, mtime, ctime, ino in snap["folders"]:
        st = _stat(f"{base}/{folder}" if folder else base)
        if st.st_mtime_ns != mtime or st.st_ctime_ns != ctime or st.st_ino != ino:
            return False
    return True
