"""Compare a tree with what the database recorded, and plan what to run. Pure: no database."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from .exceptions import PlanError
from .tree import ERROR, INFO, WARNING, Migration, Problem, Tree

APPLIED = "applied"
PENDING = "pending"
CHANGED = "changed"
MISSING = "missing"
FAILED = "failed"


@dataclass(frozen=True)
class AppliedRecord:
    """One row of the tracking table."""

    row_id: int
    name: str
    module: str | None  # None: a bare name written by the Nixopus Go migrator
    applied_at: datetime
    checksum: str | None = None
    execution_ms: float | None = None


@dataclass(frozen=True)
class Progress:
    """How far a no-transaction migration got before it failed or was killed."""

    module: str
    name: str
    direction: str
    checksum: str
    statements_done: int
    statement_hashes: tuple[str, ...]
    total: int
    error: str | None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Entry:
    """One migration's state: a file, a record, or both."""

    id: str
    module: str
    name: str
    number: int
    state: str
    migration: Migration | None = None
    record: AppliedRecord | None = None
    out_of_order: bool = False
    progress: Progress | None = None

    @property
    def applied_at(self) -> datetime | None:
        return self.record.applied_at if self.record else None

    @property
    def sort_key(self) -> tuple[int, str, str]:
        return (self.number, self.module, self.name)

    def as_dict(self) -> dict:
        data = {
            "id": self.id,
            "module": self.module,
            "name": self.name,
            "state": self.state,
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
            "out_of_order": self.out_of_order,
            "reversible": bool(self.migration and self.migration.reversible),
            "checksum": self.migration.checksum if self.migration else None,
            "recorded_checksum": self.record.checksum if self.record else None,
            "execution_ms": self.record.execution_ms if self.record else None,
            "file": self.migration.up.relpath if self.migration else None,
        }
        if self.progress:
            data["progress"] = {
                "direction": self.progress.direction,
                "statements_done": self.progress.statements_done,
                "statements_total": self.progress.total,
                "error": self.progress.error,
            }
        return data


@dataclass(frozen=True)
class Status:
    """Every migration in run order, with the problems of the tree and of the records."""

    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...]
    legacy: tuple[tuple[AppliedRecord, Migration], ...] = ()  # bare-name rows to upgrade
    tree: Tree | None = field(default=None, compare=False, repr=False)

    def with_state(self, *states: str) -> list[Entry]:
        return [e for e in self.entries if e.state in states]

    @property
    def pending(self) -> list[Entry]:
        return self.with_state(PENDING, FAILED)

    @property
    def out_of_order(self) -> list[Entry]:
        return [e for e in self.entries if e.out_of_order]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    def counts(self) -> dict[str, int]:
        counts = {APPLIED: 0, PENDING: 0, CHANGED: 0, MISSING: 0, FAILED: 0}
        for e in self.entries:
            counts[e.state] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when nothing is pending, changed, missing or failed and no problem (but info) exists."""
        counts = self.counts()
        return (counts[APPLIED] == len(self.entries)
                and not [p for p in self.problems if p.level in (ERROR, WARNING)])

    def as_dict(self) -> dict:
        return {
            "migrations": [e.as_dict() for e in self.entries],
            "problems": [p.as_dict() for p in self.problems],
            "summary": self.counts(),
        }

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {p.message}" for p in self.errors)
            raise PlanError(f"Nothing was run: {len(self.errors)} problem(s) must be fixed first:\n{lines}")


_NUMBER_RE = re.compile(r"^([0-9]+)_")


def resolve(tree: Tree, records: list[AppliedRecord], progress: list[Progress] = (), *,
            table: str = "migrations") -> Status:
    """Match tracking-table rows to files and give every migration its state.

    ``table`` only names the tracking table in the SQL that problems suggest.
    """
    by_key = {(m.module, m.name): m for m in tree.migrations}
    by_bare: dict[str, list[Migration]] = {}
    for m in tree.migrations:
        by_bare.setdefault(m.name, []).append(m)
    problems = list(tree.problems)
    matched: dict[tuple[str, str], AppliedRecord] = {}
    missing: list[Entry] = []
    legacy: list[tuple[AppliedRecord, Migration]] = []
    ambiguous: dict[str, AppliedRecord] = {}  # bare name shared by several modules -> its first row

    for rec in records:
        if rec.module is None:
            candidates = by_bare.get(rec.name, [])
            if len(candidates) > 1:
                first = ambiguous.setdefault(rec.name, rec)
                problems.append(_ambiguous(rec, candidates, table) if first is rec else
                                _duplicate(rec.name, first, rec, table))
                continue
            if candidates:
                key = (candidates[0].module, rec.name)
                legacy.append((rec, candidates[0]))
            else:
                key = ("", rec.name)
        else:
            key = (rec.module, rec.name)
        if key in matched:
            problems.append(_duplicate("/".join(k for k in key if k), matched[key], rec, table))
            continue
        matched[key] = rec
        if key not in by_key:
            m = _NUMBER_RE.match(rec.name)
            missing.append(Entry("/".join(k for k in key if k), key[0], rec.name,
                                 int(m.group(1)) if m else 0, MISSING, None, rec))

    progress_by_key = {(p.module, p.name): p for p in progress if p.direction == "up"}
    down_progress = {(p.module, p.name): p for p in progress if p.direction == "down"}
    entries: list[Entry] = []
    for m in tree.migrations:
        rec = matched.get((m.module, m.name))
        if rec is None:
            prog = progress_by_key.get((m.module, m.name))
            entries.append(Entry(m.id, m.module, m.name, m.number, FAILED if prog else PENDING, m, None,
                                 progress=prog))
        else:
            state = CHANGED if rec.checksum is not None and rec.checksum != m.checksum else APPLIED
            prog = down_progress.get((m.module, m.name))
            entries.append(Entry(m.id, m.module, m.name, m.number, FAILED if prog else state, m, rec,
                                 progress=prog))
    entries.extend(missing)
    entries.sort(key=lambda e: e.sort_key)

    last_applied = max((e.sort_key for e in entries if e.record is not None), default=None)
    if last_applied is not None:
        entries = [
            Entry(e.id, e.module, e.name, e.number, e.state, e.migration, e.record, True, e.progress)
            if e.record is None and e.sort_key < last_applied else e
            for e in entries
        ]
    for e in entries:
        if e.state == FAILED:
            p = e.progress
            problems.append(Problem(
                f"{e.id} stopped at statement {p.statements_done + 1} of {p.total} of its no-transaction "
                f"{p.direction} file ({p.error or 'the runner was interrupted'}); statements 1..{p.statements_done} "
                f"are applied. Fix the cause and run sqlmigrate_{p.direction} again to resume.",
                e.migration.up.relpath if e.migration else None, WARNING, "failed"))
    return Status(tuple(entries), tuple(problems), tuple(legacy), tree)


def _duplicate(label: str, first: AppliedRecord, rec: AppliedRecord, table: str) -> Problem:
    """Explain a second row for one migration, with the SQL that removes it."""
    return Problem(
        f"The tracking table records {label} twice (rows {first.row_id} and {rec.row_id}), as two runners racing "
        f"without a lock can leave it (the Go migrator takes none). Delete the later row, DELETE FROM {table} WHERE "
        f"id = {rec.row_id}; and run again.", None, ERROR, "duplicate_record")


def _ambiguous(rec: AppliedRecord, candidates: list[Migration], table: str) -> Problem:
    """Explain a bare Go name that files in several modules share, with the SQL that settles it."""
    # The Go migrator kept one file per bare name in a map: the last one its lexical directory walk read.
    kept = max(candidates, key=lambda m: m.up.relpath.split("/"))
    others = [m for m in candidates if m is not kept]
    return Problem(
        f"The tracking table's row {rec.row_id} names {rec.name!r} without a module, and files of that name exist "
        f"in {len(candidates)} modules ({', '.join(m.id for m in candidates)}), so nixmig can't tell which one was "
        f"applied. The Go migrator only ever knew one file per name, the last its directory walk read, so most "
        f"likely {kept.id} ran and {', '.join(m.id for m in others)} never did; check the schema. Then record the "
        f"module: ALTER TABLE {table} ADD COLUMN IF NOT EXISTS module VARCHAR; UPDATE {table} SET module = "
        f"'{kept.module}' WHERE id = {rec.row_id}; (for another module whose file did run too: INSERT INTO {table} "
        f"(name, module, applied_at) VALUES ('{rec.name}', '{others[0].module}', now());) and run again.",
        None, ERROR, "ambiguous_record")


def plan_up(status: Status, *, to: str | None = None, allow_changed: bool = False,
            allow_out_of_order: bool = False) -> list[Entry]:
    """Return the entries to apply, in run order."""
    status.raise_for_errors()
    pending = status.pending
    if to is not None:
        target = _find(status, to)
        pending = [e for e in pending if e.sort_key <= target.sort_key]
    changed = status.with_state(CHANGED)
    if changed and not allow_changed:
        ids = "\n".join(f"  - {e.id} ({e.migration.up.relpath})" for e in changed)
        raise PlanError(
            f"{len(changed)} applied migration(s) were edited after they were applied:\n{ids}\n"
            "Nothing was run. Undo the edit, or if it was intended run 'python manage.py sqlmigrate_repair' "
            "to record the new checksum (or pass --allow-changed to run anyway).")
    late = [e for e in pending if e.out_of_order]
    if late and not allow_out_of_order:
        ids = "\n".join(f"  - {e.id}" for e in late)
        raise PlanError(
            f"{len(late)} pending migration(s) sort before the latest applied one (out of order, e.g. from a "
            f"merged branch):\n{ids}\nNothing was run. Renumber them after the latest applied migration, or pass "
            "--allow-out-of-order to apply them anyway.")
    return pending


def plan_down(status: Status, *, steps: int | None = 1, to: str | None = None, everything: bool = False,
              fake: bool = False) -> list[Entry]:
    """Return the entries to roll back, most recently applied first."""
    status.raise_for_errors()
    applied = sorted((e for e in status.entries if e.record is not None), key=lambda e: e.record.row_id,
                     reverse=True)
    if everything:
        chosen = applied
    elif to is not None:
        target = _find(status, to)
        if target.record is None:
            raise PlanError(f"{target.id} is not applied, so there is nothing to roll back to; "
                            "pick an applied migration (see sqlmigrate_status).")
        chosen = [e for e in applied if e.record.row_id > target.record.row_id]
    else:
        if steps is None or steps < 1:
            raise PlanError("--steps must be 1 or more.")
        chosen = applied[:steps]
    if not fake:
        for i, e in enumerate(chosen):
            if e.migration is None:
                raise PlanError(
                    f"{e.id} can't be rolled back: its files are missing from the migrations directory. "
                    f"Nothing was rolled back. Restore the files, roll back {i} step(s) only, or remove its "
                    "record without running SQL with --fake.")
            if not e.migration.reversible:
                raise PlanError(
                    f"{e.id} is irreversible: it has no down file ({e.migration.up.relpath[:-7]}_down.sql). "
                    f"Nothing was rolled back. Roll back at most {i} step(s), add the down file, or remove its "
                    "record without running SQL with --fake.")
    return chosen


def _find(status: Status, migration_id: str) -> Entry:
    wanted = migration_id.strip().strip("/")
    for e in status.entries:
        if e.id == wanted:
            return e
    matches = [e for e in status.entries if e.name == wanted]
    if len(matches) == 1:
        return matches[0]
    hint = f" It matches {', '.join(e.id for e in matches)}: give the module too." if matches else \
        " Use an id as sqlmigrate_status shows it, e.g. auth/001_create_users."
    raise PlanError(f"There is no migration {migration_id!r}.{hint}")


__all__ = ["APPLIED", "PENDING", "CHANGED", "MISSING", "FAILED", "INFO", "AppliedRecord", "Progress",
           "Entry", "Status", "resolve", "plan_up", "plan_down"]
