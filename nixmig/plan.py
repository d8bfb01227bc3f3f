"""Compare a tree with what the database recorded, and plan what to run. Pure: no database."""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import __version__
from .exceptions import PlanError
from .sqlnames import literal
from .sqlnames import table as quoted_table
from .tree import ERROR, INFO, WARNING, Migration, Problem, SqlFile, Tree

APPLIED = "applied"
PENDING = "pending"
CHANGED = "changed"
MISSING = "missing"
# A no-transaction file stopped part-way (failed, or its runner was killed). The direction is kept:
PARTLY_APPLIED = "partly_applied"  # not recorded; statements 1..k of its up file ran
PARTLY_ROLLED_BACK = "partly_rolled_back"  # still recorded; statements 1..k of its down file ran
PARTIAL = (PARTLY_APPLIED, PARTLY_ROLLED_BACK)


@dataclass(frozen=True, init=False)
class AppliedRecord:
    """One row of the tracking table."""

    row_id: int
    name: str
    module: str | None  # None: a bare name written by the Nixopus Go migrator
    applied_at: datetime
    checksum: str | None = None
    execution_ms: float | None = None

    def __init__(
        self,
        row_id: int,
        name: str,
        module: str | None,
        applied_at: datetime,
        checksum: str | None = None,
        execution_ms: float | None = None,
    ) -> None:
        # Frozen, but filled in one step: a frozen dataclass's own __init__ sets each field through
        # object.__setattr__, four times slower, and a status builds one per row (10,000 and more).
        self.__dict__.update(
            row_id=row_id,
            name=name,
            module=module,
            applied_at=applied_at,
            checksum=checksum,
            execution_ms=execution_ms,
        )


@dataclass(frozen=True)
class Progress:
    """How far a no-transaction migration got before it failed or was killed.

    ``statements_done`` statements of the file of ``direction`` ran (each committed with this
    row, except a statement that can't run in a transaction, whose row follows it); none after.
    One hash more than ``statements_done`` marks such a non-transactional statement as sent but
    not confirmed (``in_flight``): the runner stopped while it ran, and it may have finished.
    """

    module: str
    name: str
    direction: str
    checksum: str
    statements_done: int
    statement_hashes: tuple[str, ...]
    total: int
    error: str | None
    updated_at: datetime | None = None

    @property
    def in_flight(self) -> bool:
        return len(self.statement_hashes) > self.statements_done

    @property
    def started(self) -> bool:
        return self.statements_done > 0 or self.in_flight


@dataclass(frozen=True, init=False)
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
    # Filled in (by nixmig.api, which may parse) for a partly run file: its statements' first lines,
    # and whether the statements that ran were edited since (then it can't resume).
    statement_lines: tuple[int, ...] = ()
    edited: bool = False

    def __init__(
        self,
        id: str,
        module: str,
        name: str,
        number: int,
        state: str,
        migration: Migration | None = None,
        record: AppliedRecord | None = None,
        out_of_order: bool = False,
        progress: Progress | None = None,
        statement_lines: tuple[int, ...] = (),
        edited: bool = False,
    ) -> None:
        # One entry per migration on every status: filled in one step, as AppliedRecord is.
        self.__dict__.update(
            id=id,
            module=module,
            name=name,
            number=number,
            state=state,
            migration=migration,
            record=record,
            out_of_order=out_of_order,
            progress=progress,
            statement_lines=statement_lines,
            edited=edited,
        )

    @property
    def applied_at(self) -> datetime | None:
        return self.record.applied_at if self.record else None

    @property
    def files(self) -> Migration:
        """The migration's files: every state but MISSING has them."""
        if self.migration is None:
            raise ValueError(f"{self.id} is {self.state}: it has no files")
        return self.migration

    @property
    def recorded(self) -> AppliedRecord:
        """The tracking-table row: APPLIED, CHANGED, PARTLY_ROLLED_BACK and MISSING entries have one."""
        if self.record is None:
            raise ValueError(f"{self.id} is {self.state}: it is not recorded")
        return self.record

    @property
    def sort_key(self) -> tuple[int, str, str]:
        return (self.number, self.module, self.name)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
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
    leftovers: tuple[Any, ...] = ()  # what interrupted non-transactional statements left (nixmig.leftovers)

    def with_state(self, *states: str) -> list[Entry]:
        return [e for e in self.entries if e.state in states]

    @property
    def pending(self) -> list[Entry]:
        return self.with_state(PENDING, PARTLY_APPLIED)

    @property
    def out_of_order(self) -> list[Entry]:
        return [e for e in self.entries if e.out_of_order]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    def counts(self) -> dict[str, int]:
        known = self.__dict__.get("_counts")  # counted once: status asks several times, over 10,000 entries
        if known is None:
            known = {APPLIED: 0, PENDING: 0, CHANGED: 0, MISSING: 0, PARTLY_APPLIED: 0, PARTLY_ROLLED_BACK: 0}
            for e in self.entries:
                known[e.state] += 1
            self.__dict__["_counts"] = known
        return dict(known)

    def counts_text(self, *, applied: bool = False) -> str:
        """'2 pending, 0 changed, 0 missing, 1 partly applied, 0 partly rolled back' (for summaries)."""
        c = self.counts()
        parts = ([f"{c[APPLIED]} applied"] if applied else []) + [
            f"{c[PENDING]} pending",
            f"{c[CHANGED]} changed",
            f"{c[MISSING]} missing",
            f"{c[PARTLY_APPLIED]} partly applied",
            f"{c[PARTLY_ROLLED_BACK]} partly rolled back",
        ]
        return ", ".join(parts)

    @property
    def ok(self) -> bool:
        """True when nothing is pending, changed, missing or partial and no problem (but info) exists."""
        counts = self.counts()
        return counts[APPLIED] == len(self.entries) and not [
            p for p in self.problems if p.level in (ERROR, WARNING)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "nixmig_version": __version__,
            "migrations": [e.as_dict() for e in self.entries],
            "problems": [p.as_dict() for p in self.problems],
            "leftovers": [x.as_dict() for x in self.leftovers],
            "summary": self.counts(),
        }

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {p.message}" for p in self.errors)
            raise PlanError(f"Nothing was run: {len(self.errors)} problem(s) must be fixed first:\n{lines}")


@dataclass(frozen=True)
class RunOptions:
    """How one run goes: the direction, and whether it fakes or runs all in one transaction."""

    direction: str = "up"  # "up" applies, "down" rolls back
    fake: bool = False  # write or remove the records only; run no SQL
    atomic: bool = False  # the whole run in one transaction (up only)

    @property
    def verb(self) -> str:
        return "Applying" if self.direction == "up" else "Rolling back"

    @property
    def done_verb(self) -> str:
        return "applied" if self.direction == "up" else "rolled back"


_NUMBER_RE = re.compile(r"^([0-9]+)_")
_sort_key = operator.attrgetter("number", "module", "name")  # = Entry.sort_key


def resolve(
    tree: Tree,
    records: Sequence[AppliedRecord],
    progress: Sequence[Progress] = (),
    *,
    table: str = "migrations",
) -> Status:
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
                problems.append(
                    _ambiguous(rec, candidates, table)
                    if first is rec
                    else _duplicate(rec.name, first, rec, table)
                )
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
            number = _NUMBER_RE.match(rec.name)
            problems.append(_missing_files("/".join(k for k in key if k), key[0], rec, table))
            missing.append(
                Entry(
                    "/".join(k for k in key if k),
                    key[0],
                    rec.name,
                    int(number.group(1)) if number else 0,
                    MISSING,
                    None,
                    rec,
                )
            )

    # A progress row counts only in the direction it can belong to: up for an unrecorded migration,
    # down for a recorded one, and only once a statement ran. Any other row is stale (see below).
    up_progress = {(p.module, p.name): p for p in progress if p.direction == "up" and p.started}
    down_progress = {(p.module, p.name): p for p in progress if p.direction == "down" and p.started}
    used: set[tuple[str, str, str]] = set()
    # Out of order: not recorded, but sorting before the latest recorded migration. One pass over the
    # files, which are in run order already; the rows of missing files merge in only when there are any.
    last_applied = max(
        [by_key[key].sort_key for key in matched if key in by_key] + [e.sort_key for e in missing],
        default=None,
    )
    entries: list[Entry] = []
    append = entries.append
    for m in tree.migrations:
        key = (m.module, m.name)
        recorded = matched.get(key)
        late = False
        if recorded is None:
            prog = up_progress.get(key) if up_progress else None
            state = PARTLY_APPLIED if prog else PENDING
            late = last_applied is not None and m.sort_key < last_applied
        else:
            prog = down_progress.get(key) if down_progress else None
            state = (
                PARTLY_ROLLED_BACK
                if prog
                else CHANGED
                if recorded.checksum is not None and recorded.checksum != m.checksum
                else APPLIED
            )
        if prog is not None:
            used.add((m.module, m.name, prog.direction))
        append(Entry(m.id, m.module, m.name, m.number, state, m, recorded, late, prog))
    if missing:
        entries.extend(missing)
        entries.sort(key=_sort_key)
    for e in entries:
        if e.state in PARTIAL:
            problems.append(Problem(describe_partial(e), _partial_file(e).relpath, WARNING, e.state))
    for p in progress:
        if (p.module, p.name, p.direction) not in used:
            label = f"{p.module}/{p.name}" if p.module else p.name
            problems.append(
                Problem(
                    f"The progress table has a stale row for {label} ({p.direction}, {p.statements_done} statement(s) "
                    f"done) that matches no partly applied or partly rolled-back migration (an older nixmig, or a "
                    f"migration recorded or removed by hand since). It changes nothing; remove it with "
                    f"sqlmigrate_repair --forget-progress {label}.",
                    None,
                    WARNING,
                    "stale_progress",
                )
            )
    return Status(tuple(entries), tuple(problems), tuple(legacy), tree)


def _partial_file(entry: Entry) -> SqlFile:
    files = entry.files
    return files.up if entry.state == PARTLY_APPLIED else files.down or files.up


def describe_partial(entry: Entry) -> str:
    """Say truly what a partly applied or partly rolled-back migration is, and every way out of it."""
    p = entry.progress
    assert p is not None, "describe_partial() takes a partly run entry"
    lines, edited = entry.statement_lines, entry.edited
    k, n = p.statements_done, p.total
    sql_file = _partial_file(entry)
    ran = "no statement" if k == 0 else "statement 1" if k == 1 else f"statements 1..{k}"
    if lines and len(lines) >= k > 0:
        ran += f" (line {lines[0]})" if k == 1 else f" (lines {lines[0]} to {lines[k - 1]})"
    if p.in_flight:
        cause = (
            f"and statement {k + 1}, which can't run in a transaction, was running when its runner stopped, so "
            "it may have finished (the next run checks: a finished CREATE INDEX CONCURRENTLY is kept, an "
            "invalid index is dropped and built again)"
        )
    elif p.error:
        cause = f"then statement {k + 1} failed: {p.error.rstrip('.')}"
    else:
        cause = f"then its runner stopped before statement {k + 1}"
    if entry.state == PARTLY_APPLIED:
        head = (
            f"{entry.id} is partly applied: {ran} of {n} of its no-transaction up file {sql_file.relpath} ran, "
            f"{cause}. It is not recorded as applied."
        )
        finish = (
            f"run sqlmigrate_up to resume at statement {k + 1} (statements that ran are never run again)"
            if not edited
            else f"statements 1..{k} have been edited since they ran, so nixmig can't resume: restore them and "
            "run sqlmigrate_up"
        )
        return (
            f"{head} To settle it, {finish}; or, if you completed the migration by hand, record it with "
            f"sqlmigrate_up --fake --to {entry.id}; or, if you undid {ran} by hand, make it pending again "
            f"with sqlmigrate_repair --forget-progress {entry.id}. sqlmigrate_down refuses until then."
        )
    head = (
        f"{entry.id} is partly rolled back: {ran} of {n} of its no-transaction down file {sql_file.relpath} "
        f"ran, {cause}. It stays recorded as applied, but some of its effects are undone."
    )
    finish = (
        f"fix the cause and run sqlmigrate_down to resume at statement {k + 1} (statements that ran are "
        "never run again)"
        if not edited
        else f"statements 1..{k} of the down file have been edited since they ran, so nixmig can't resume: "
        "restore them and run sqlmigrate_down"
    )
    return (
        f"{head} To settle it, {finish}; or, if you finished the rollback by hand, remove its record with "
        f"sqlmigrate_down --fake; or, if you restored by hand what {ran} undid, keep it applied with "
        f"sqlmigrate_repair --forget-progress {entry.id}. sqlmigrate_up refuses until then."
    )


def _missing_files(label: str, module: str, rec: AppliedRecord, table: str) -> Problem:
    """Explain an applied migration whose files are gone, and both ways to settle it."""
    up = f"{module}/{rec.name}_up.sql" if module else None
    where = f"({up})" if up else f"(no module has {rec.name}_up.sql)"
    return Problem(
        f"{label} is recorded as applied, but its files are gone {where}. Restore them from version control; "
        "if the migration was removed on purpose, its schema changes are still in the database: roll it back "
        f"first, or delete its record (DELETE FROM {table} WHERE id = {rec.row_id};).",
        up,
        WARNING,
        "missing_file",
    )


def _duplicate(label: str, first: AppliedRecord, rec: AppliedRecord, table: str) -> Problem:
    """Explain a second row for one migration, with the SQL that removes it."""
    table = quoted_table(table)
    return Problem(
        f"The tracking table records {label} twice (rows {first.row_id} and {rec.row_id}), as two runners racing "
        f"without a lock can leave it (the Go migrator takes none). Delete the later row, DELETE FROM {table} WHERE "
        f"id = {int(rec.row_id)}; and run again.",
        None,
        ERROR,
        "duplicate_record",
    )


def _ambiguous(rec: AppliedRecord, candidates: list[Migration], table: str) -> Problem:
    """Explain a bare Go name that files in several modules share, with the SQL that settles it."""
    # The Go migrator kept one file per bare name in a map: the last one its lexical directory walk read.
    kept = max(candidates, key=lambda m: m.up.relpath.split("/"))
    others = [m for m in candidates if m is not kept]
    table = quoted_table(table)
    return Problem(
        f"The tracking table's row {rec.row_id} names {rec.name!r} without a module, and files of that name exist "
        f"in {len(candidates)} modules ({', '.join(m.id for m in candidates)}), so nixmig can't tell which one was "
        f"applied. The Go migrator only ever knew one file per name, the last its directory walk read, so most "
        f"likely {kept.id} ran and {', '.join(m.id for m in others)} never did; check the schema. Then record the "
        f"module: ALTER TABLE {table} ADD COLUMN IF NOT EXISTS module VARCHAR; UPDATE {table} SET module = "
        f"{literal(kept.module)} WHERE id = {int(rec.row_id)}; (for another module whose file did run too: INSERT "
        f"INTO {table} (name, module, applied_at) VALUES ({literal(rec.name)}, {literal(others[0].module)}, now());) "
        "and run again.",
        None,
        ERROR,
        "ambiguous_record",
    )


def plan_up(
    status: Status, *, to: str | None = None, allow_changed: bool = False, allow_out_of_order: bool = False
) -> list[Entry]:
    """Return the entries to apply, in run order (a partly applied one resumes)."""
    status.raise_for_errors()
    back = status.with_state(PARTLY_ROLLED_BACK)
    if back:
        raise PlanError("Nothing was run. " + " ".join(describe_partial(e) for e in back))
    pending = status.pending
    if to is not None:
        target = _find(status, to)
        pending = [e for e in pending if e.sort_key <= target.sort_key]
    changed = status.with_state(CHANGED)
    if changed and not allow_changed:
        ids = "\n".join(f"  - {e.id} ({e.files.up.relpath})" for e in changed)
        raise PlanError(
            f"{len(changed)} applied migration(s) were edited after they were applied:\n{ids}\n"
            "Nothing was run. Undo the edit, or if it was intended run 'python manage.py sqlmigrate_repair' "
            "to record the new checksum (or pass --allow-changed to run anyway)."
        )
    late = [e for e in pending if e.out_of_order]
    if late and not allow_out_of_order:
        ids = "\n".join(f"  - {e.id}" for e in late)
        raise PlanError(
            f"{len(late)} pending migration(s) sort before the latest applied one (out of order, e.g. from a "
            f"merged branch):\n{ids}\nNothing was run. Renumber them after the latest applied migration, or pass "
            "--allow-out-of-order to apply them anyway."
        )
    return pending


def plan_down(
    status: Status,
    *,
    steps: int | None = 1,
    to: str | None = None,
    everything: bool = False,
    fake: bool = False,
) -> list[Entry]:
    """Return the entries to roll back, most recently applied first."""
    status.raise_for_errors()
    forward = status.with_state(PARTLY_APPLIED)
    if forward:
        raise PlanError("Nothing was rolled back. " + " ".join(describe_partial(e) for e in forward))
    applied = sorted(
        (e for e in status.entries if e.record is not None), key=lambda e: e.recorded.row_id, reverse=True
    )
    if everything:
        chosen = applied
    elif to is not None:
        target = _find(status, to)
        if target.record is None:
            raise PlanError(
                f"{target.id} is not applied, so there is nothing to roll back to; "
                "pick an applied migration (see sqlmigrate_status)."
            )
        chosen = [e for e in applied if e.recorded.row_id > target.record.row_id]
    else:
        if steps is None or steps < 1:
            raise PlanError("--steps must be 1 or more.")
        chosen = applied[:steps]
    back = status.with_state(PARTLY_ROLLED_BACK)
    if back and (not chosen or chosen[0].id != back[0].id):
        raise PlanError(
            f"Nothing was rolled back: {back[0].id} is partly rolled back, so it must be rolled back "
            f"first{' and kept by --to' if to else ''}. " + describe_partial(back[0])
        )
    if not fake:
        for i, e in enumerate(chosen):
            if e.migration is None:
                raise PlanError(
                    f"{e.id} can't be rolled back: its files are missing from the migrations directory. "
                    f"Nothing was rolled back. Restore the files, roll back {i} step(s) only, or remove its "
                    "record without running SQL with --fake."
                )
            if not e.migration.reversible:
                down_file = f"{e.migration.up.relpath[: -len('_up.sql')]}_down.sql"
                if i == 0:
                    raise PlanError(
                        f"Nothing can be rolled back: the most recently applied migration, {e.id}, is irreversible "
                        f"(it has no down file, {down_file}). Nothing was rolled back. Add the down file (an empty "
                        "one is an explicit no-op rollback), or remove its record without running SQL with --fake."
                    )
                raise PlanError(
                    f"{e.id} is irreversible: it has no down file ({down_file}). Nothing was rolled back. Roll "
                    f"back at most {i} step(s) (--steps {i}), add the down file, or remove its record without "
                    "running SQL with --fake."
                )
    return chosen


def _find(status: Status, migration_id: str) -> Entry:
    wanted = migration_id.strip().strip("/")
    for e in status.entries:
        if e.id == wanted:
            return e
    matches = [e for e in status.entries if e.name == wanted]
    if len(matches) == 1:
        return matches[0]
    raise PlanError(f"There is no migration {migration_id!r}.{_id_hint(status, wanted, matches)}")


def _id_hint(status: Status, wanted: str, matches: list[Entry]) -> str:
    """Say which id was meant: the module to add, the closest id of the tree, or an example from it."""
    if matches:
        return f" It matches {', '.join(e.id for e in matches)}: give the module too."
    ids = [e.id for e in status.entries]
    close = difflib.get_close_matches(wanted, ids, n=1, cutoff=0.8)
    if close:
        return f" Did you mean {close[0]}? Use an id as sqlmigrate_status shows it."
    if ids:
        return f" Use an id as sqlmigrate_status shows it, e.g. {ids[0]}."
    return " The migrations directory has no migration yet."


__all__ = [
    "RunOptions",
    "APPLIED",
    "PENDING",
    "CHANGED",
    "MISSING",
    "PARTLY_APPLIED",
    "PARTLY_ROLLED_BACK",
    "PARTIAL",
    "INFO",
    "AppliedRecord",
    "Progress",
    "Entry",
    "Status",
    "resolve",
    "plan_up",
    "plan_down",
]
