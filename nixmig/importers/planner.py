"""Map another tool's migrations onto nixmig files, and write them. No database.

``plan_import`` decides every file name and byte before anything is written and checks each
planned file the way nixmig reads one (in memory); ``write_import`` writes them, refusing to
overwrite, and loads the whole target tree once more: if anything is wrong, nothing stays
written.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..exceptions import SourceTreeError, TreeError
from ..tree import FILE_RE, MODULE_SEGMENT_RE, SqlFile, Tree, load_tree, normalise, parse_directives
from .readers import Source, SourceMigration, is_utf8

NO_TRANSACTION = "-- nixmig:no-transaction"
EMPTY = "-- nixmig:empty"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class PlannedMigration:
    """One source migration as nixmig files."""

    source: SourceMigration
    module: str
    number: int
    name: str  # the nixmig bare name, "<NNNNN>_<version>_<name>"
    up: bytes
    down: bytes | None
    up_directives: tuple[str, ...] = ()
    down_directives: tuple[str, ...] = ()
    existing: bool = False  # imported before: identical files are in place already
    warnings: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.module}/{self.name}"

    @property
    def up_path(self) -> str:
        return f"{self.module}/{self.name}_up.sql"

    @property
    def down_path(self) -> str | None:
        return f"{self.module}/{self.name}_down.sql" if self.down is not None else None

    def sql_files(self) -> list[tuple[str, bytes, str | None]]:
        """Return (path relative to the directory, bytes, origin in the source) of its up and down file."""
        out: list[tuple[str, bytes, str | None]] = [(self.up_path, self.up, self.source.up_origin)]
        if self.down is not None:
            out.append((f"{self.module}/{self.name}_down.sql", self.down, self.source.down_origin))
        return out

    @property
    def renamed(self) -> bool:
        """True when the source's name held characters nixmig names can't (dots, spaces, ...)."""
        return bool(_UNSAFE.search(self.source.label + self.source.name))


@dataclass(frozen=True)
class ImportPlan:
    """Everything an import would write, decided before anything is."""

    source: Source
    directory: Path
    module: str
    migrations: tuple[PlannedMigration, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def new(self) -> list[PlannedMigration]:
        return [m for m in self.migrations if not m.existing]

    def files(self) -> list[tuple[str, bytes]]:
        """Return (path relative to the directory, bytes) of every file to write."""
        return [(rel, data) for m in self.new for rel, data, _ in m.sql_files()]


def nixmig_name(number: int, migration: SourceMigration) -> str:
    """Return the nixmig bare name: the number, the original version and the name, made safe."""
    label = _UNSAFE.sub("_", migration.label)
    name = _UNSAFE.sub("_", migration.name)
    return f"{number:05d}_{label}_{name}" if name else f"{number:05d}_{label}"


def _newline(text: str) -> str:
    end = text.find("\n")
    return "\r\n" if end > 0 and text[end - 1] == "\r" else "\n"


def _with_directives(text: str, directives: tuple[str, ...]) -> bytes:
    newline = _newline(text)
    head = "".join(d + newline for d in directives)
    bom = "\ufeff" if text.startswith("\ufeff") and head else ""  # a BOM stays the first character
    return (bom + head + text[len(bom) :]).encode("utf-8", "surrogateescape")


def _is_empty(text: str) -> bool:
    """True when the text holds no SQL statement (only blank lines and comments)."""
    from ..sqltext import analyze

    if not text.strip():
        return True
    if not is_utf8(text):
        return False  # nixmig's loader refuses the file, naming it
    analysis = analyze(text)
    return not analysis.statements and analysis.unscannable_line is None


def check_module(module: str) -> str:
    module = module.strip().strip("/")
    if not module or not all(MODULE_SEGMENT_RE.fullmatch(s) and set(s) != {"."} for s in module.split("/")):
        raise SourceTreeError(
            f"{module!r} is not a valid module: use folder names of letters, digits, '_', '-' and "
            "'.', separated by '/' (pass --module)."
        )
    return module


def plan_import(source: Source, directory: str | Path, module: str) -> ImportPlan:
    """Decide the nixmig file of every source migration; write nothing."""
    module = check_module(module)
    root = Path(directory)
    tree = load_tree(root) if root.exists() else Tree(root, ())
    if tree.errors:
        lines = "\n".join(f"  - {p.message}" for p in tree.errors)
        raise SourceTreeError(
            f"The migration tree {root} has {len(tree.errors)} error(s) already; fix them before "
            f"importing into it (nothing was written):\n{lines}"
        )
    # A migration imported by an earlier run (same version and name in the module) is kept, not written again.
    earlier = {m.name.split("_", 1)[1]: m for m in tree.migrations if m.module == module and "_" in m.name}
    number = tree.highest_number()
    planned: list[PlannedMigration] = []
    problems: list[str] = []
    for migration in source.migrations:
        up_directives = []
        if migration.up_no_transaction:
            up_directives.append(NO_TRANSACTION)
        if _is_empty(migration.up):
            up_directives = [EMPTY]  # nothing to run: the tool records it and runs nothing
        down_directives = (
            [NO_TRANSACTION] if migration.down_no_transaction and migration.down is not None else []
        )
        up = _with_directives(migration.up, tuple(up_directives))
        down = (
            _with_directives(migration.down, tuple(down_directives)) if migration.down is not None else None
        )
        key = nixmig_name(0, migration).split("_", 1)[1]
        previous = earlier.get(key)
        if previous is not None:
            same = (
                previous.up.path.read_bytes() == up
                and (previous.down.path.read_bytes() if previous.down else None) == down
            )
            if not same:
                problems.append(
                    f"{previous.up.relpath}: was imported from {migration.up_origin} before and differs "
                    "from what an import writes now (the source or the file was edited); nixmig does not "
                    "overwrite it. Compare the two, then move the nixmig file away to import it again, or "
                    "keep it and leave the source alone."
                )
                continue
            planned.append(
                PlannedMigration(
                    migration,
                    module,
                    previous.number,
                    previous.name,
                    up,
                    down,
                    tuple(up_directives),
                    tuple(down_directives),
                    existing=True,
                )
            )
            continue
        number += 1
        name = nixmig_name(number, migration)
        if not FILE_RE.fullmatch(
            f"{name}_up.sql"
        ):  # cannot happen with _UNSAFE, but never write a name nixmig refuses
            problems.append(
                f"{migration.up_origin}: makes the nixmig name {name!r}, which nixmig can't read."
            )
            continue
        planned.append(
            PlannedMigration(
                migration, module, number, name, up, down, tuple(up_directives), tuple(down_directives)
            )
        )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SourceTreeError(
            f"Can't import {source.directory} into {root / module}; nothing was written:\n{lines}"
        )
    for m in planned:
        for path in (m.up_path, m.down_path):
            if path and not m.existing and (root / path).exists():
                raise SourceTreeError(
                    f"{root / path} exists already; nixmig does not overwrite files. Move it away, "
                    "or import into another --module."
                )
    warnings = check_new_files(planned)
    planned = [replace(m, warnings=tuple(warnings.get(m.id, ()))) for m in planned]
    return ImportPlan(source, root, module, tuple(planned), source.notes)


def _as_sql_file(data: bytes, relpath: str) -> tuple[SqlFile | None, list[str]]:
    """Read planned bytes the way nixmig reads a file (tree.read_sql_file), without touching the disk."""
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        return None, [
            f"{relpath}:{line}: contains a NUL byte, which PostgreSQL can't accept in SQL; the file is "
            "probably binary or UTF-16: save it as UTF-8 text."
        ]
    normalised = normalise(data)
    try:
        text = normalised.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = normalised.count(b"\n", 0, exc.start) + 1
        return None, [
            f"{relpath}:{line}: is not valid UTF-8 (byte 0x{normalised[exc.start]:02x} at offset "
            f"{exc.start}); re-save the file as UTF-8."
        ]
    directives, problems = parse_directives(text, relpath)
    if problems:
        return None, [p.message for p in problems]
    return SqlFile(Path(relpath), relpath, text, "", directives), []


def check_new_files(planned: list[PlannedMigration]) -> dict[str, list[str]]:
    """Check the new files the way nixmig reads a tree; raise on errors, write nothing.

    Return, per migration id, why nixmig would refuse to run a file (a statement that can't
    run in a transaction, ...): the source tool may have run it differently, so it is a warning.
    """
    from ..sqltext import prepare

    errors: list[str] = []
    warnings: dict[str, list[str]] = {}
    for m in planned:
        if m.existing:
            continue
        for rel, data, origin in m.sql_files():
            sql_file, problems = _as_sql_file(data, rel)
            if sql_file is None:
                errors.extend(f"{p} (from {origin})" for p in problems)
                continue
            try:
                prepare(sql_file)
            except TreeError as exc:
                warnings.setdefault(m.id, []).append(str(exc))
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise SourceTreeError(
            f"The imported files would not make a valid nixmig tree; nothing was written:\n{lines}"
        )
    return warnings


def write_import(plan: ImportPlan) -> list[Path]:
    """Write the planned files; refuse to overwrite; leave nothing written if the tree would be invalid."""
    files = plan.files()
    if not files:
        return []
    root = plan.directory
    for rel, _ in files:
        if (root / rel).exists():
            raise SourceTreeError(
                f"{root / rel} exists already; nixmig does not overwrite files. Move it away, or "
                "import into another --module. Nothing was written."
            )
    # Write, then the whole target tree must load without errors, or everything written goes again.
    created_dirs = set()
    for rel, _ in files:
        folder = (root / rel).parent
        while not folder.exists():
            created_dirs.add(folder)
            folder = folder.parent
    written: list[Path] = []
    try:
        for rel, data in files:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as handle:  # 'x': never overwrite, even a file that appeared just now
                handle.write(data)
            written.append(path)
        errors = load_tree(root).errors
        if errors:
            lines = "\n".join(f"  - {p.message}" for p in errors)
            raise SourceTreeError(
                f"After the import the tree {root} would have {len(errors)} error(s); the imported "
                f"files were removed again:\n{lines}"
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in sorted(created_dirs, key=lambda d: len(d.parts), reverse=True):
            if folder.is_dir() and not any(folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    return written
