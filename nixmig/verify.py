"""Prove that every down file reverses its up file, and show drift between a live database and the tree.

``verify()`` replays the tree in a scratch database. For each migration it snapshots the
schema (``nixmig.snapshot``), runs the up, snapshots, runs the down, snapshots and compares
with the snapshot before the up, runs the up again and compares with the snapshot after the
first up. ``drift()`` brings a scratch database to the live database's applied set and
compares the two schemas. Both report progress through a callback and never print; the
command ``sqlmigrate_verify`` renders. The scratch database is dropped at the end, also on
failure or Ctrl-C, unless ``keep=True``.

The last result per migration is stored in ``<tracking table>_verify`` of the database
verified against (``VerifyStore``), with the checksums of the files it was computed for, so
``sqlmigrate_status`` and the admin can show it and mark it stale after an edit.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from django.db import DatabaseError, connections

from . import api, conf, databases, snapshot
from .exceptions import MigrationFailed, NixmigError
from .tree import Migration, Tree

Callback = Callable[..., None]

EXACT = "exact"  # the down restores the schema before the up, and the up runs again to the same schema
WARNING = "warning"  # exact schema, but rows differ (a down that deletes seed rows)
NOT_EXACT = "not exact"  # the round trip leaves a difference, or the up can't run again
IRREVERSIBLE = "irreversible"  # no down file: applied once
FAILED = "failed"  # the up failed on a clean replay: nothing after it can be verified
NOT_RUN = "not run"  # after a failed up
RESULTS = (EXACT, WARNING, NOT_EXACT, IRREVERSIBLE, FAILED, NOT_RUN)


class ScratchDatabaseError(NixmigError):
    """The scratch database can't be created."""


@dataclass(frozen=True)
class Finding:
    """One thing a round trip (or drift) got wrong, in words, with the object and both definitions."""

    level: str  # "error" or "warning"
    message: str
    phase: str  # "down", "reup", "up" or "drift"
    kind: str = ""
    name: str = ""
    before: str | None = None
    after: str | None = None

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "phase": self.phase,
            "message": self.message,
            "kind": self.kind,
            "name": self.name,
            "before": self.before,
            "after": self.after,
        }


@dataclass
class MigrationResult:
    """The verdict on one migration."""

    migration: Migration
    result: str
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return self.migration.id

    @property
    def ok(self) -> bool:
        return self.result in (EXACT, WARNING, IRREVERSIBLE)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "module": self.migration.module,
            "name": self.migration.name,
            "result": self.result,
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
            "up_file": self.migration.up.relpath,
            "down_file": self.migration.down.relpath if self.migration.down is not None else None,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class DriftReport:
    """How the live database differs from what its applied migrations produce."""

    database: str
    applied: list[str]
    only_live: list[snapshot.Difference] = field(default_factory=list)
    only_tree: list[snapshot.Difference] = field(default_factory=list)
    different: list[snapshot.Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.only_live or self.only_tree or self.different)

    def as_dict(self) -> dict:
        def items(diffs):
            return [{"kind": d.kind, "name": d.name, "tree": d.before, "live": d.after} for d in diffs]

        return {
            "database": self.database,
            "applied": len(self.applied),
            "ok": self.ok,
            "only_live": items(self.only_live),
            "only_tree": items(self.only_tree),
            "different": items(self.different),
            "notes": self.notes,
        }


@dataclass
class VerifyReport:
    """Everything one run found."""

    database: str
    scratch: str = ""
    kept: bool = False
    results: list[MigrationResult] = field(default_factory=list)
    drift: DriftReport | None = None
    seconds: float = 0.0
    snapshot_seconds: float = 0.0
    snapshots: int = 0
    stored: bool = False

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and (self.drift is None or self.drift.ok)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(RESULTS, 0)
        for r in self.results:
            counts[r.result] += 1
        return counts

    def summary(self) -> str:
        if self.drift is not None and not self.results:
            d = self.drift
            if d.ok:
                return f"No drift: database {d.database!r} matches its {len(d.applied)} applied migration(s)."
            return (
                f"Drift in database {d.database!r}: {len(d.only_live)} object(s) only in the live database, "
                f"{len(d.only_tree)} only in the tree, {len(d.different)} different."
            )
        c = self.counts()
        parts = [
            f"{c[EXACT]} exact",
            f"{c[WARNING]} with warnings",
            f"{c[NOT_EXACT]} not exact",
            f"{c[IRREVERSIBLE]} irreversible",
            f"{c[FAILED]} failed",
        ]
        if c[NOT_RUN]:
            parts.append(f"{c[NOT_RUN]} not run")
        return f"Verified {len(self.results)} migration(s) in {self.seconds:.1f} s: {', '.join(parts)}."

    def as_dict(self) -> dict:
        return {
            "database": self.database,
            "scratch_database": self.scratch if self.kept else None,
            "ok": self.ok,
            "summary": self.summary(),
            "counts": self.counts(),
            "migrations": [r.as_dict() for r in self.results],
            "drift": self.drift.as_dict() if self.drift is not None else None,
            "seconds": round(self.seconds, 3),
            "snapshots": {"count": self.snapshots, "seconds": round(self.snapshot_seconds, 3)},
        }


# -- the scratch database ------------------------------------------------------------------


class ScratchDatabase:
    """A database of its own on the server of ``database`` (or NIXMIG['VERIFY_DATABASE_URL']).

    Registered as a temporary Django connection alias, so the API runs migrations there.
    """

    def __init__(self, database: str):
        self.database = database
        self.name = f"nixmig_verify_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.alias = self.name
        self.admin_alias = database
        self.server_alias: str | None = None
        self.created = False

    def create(self) -> None:
        url = _setting("VERIFY_DATABASE_URL")
        if url:
            import dj_database_url

            settings = dj_database_url.parse(str(url))
            self.server_alias = f"{self.name}_server"
            databases.register(self.server_alias, databases.complete(settings))
            self.admin_alias = self.server_alias
        admin = api.connection_for(self.admin_alias)
        base = admin.settings_dict
        try:
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.name}" TEMPLATE template0')
        except DatabaseError as exc:
            where = "NIXMIG['VERIFY_DATABASE_URL']" if url else f"database {self.database!r}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._forget_server()
            raise ScratchDatabaseError(
                f"Can't create the scratch database {self.name} on the server of {where} ({first}). "
                f"sqlmigrate_verify needs a role that may create databases: grant it with "
                f"ALTER ROLE {base.get('USER') or '<role>'} CREATEDB, or set NIXMIG['VERIFY_DATABASE_URL'] to a "
                "server where it may (e.g. a throwaway PostgreSQL in CI)."
            ) from None
        self.created = True
        settings = dict(base, NAME=self.name)
        settings["TEST"] = dict(base.get("TEST") or {}, NAME=self.name)
        databases.register(self.alias, settings)

    @property
    def connection(self):
        return connections[self.alias]

    def recreate(self) -> None:
        """Drop and create the scratch database again (its state is unknown after a failed step)."""
        self.drop()
        self.name = f"nixmig_verify_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.alias = self.name
        self.create()

    def drop(self) -> None:
        databases.forget(self.alias)
        if self.created:
            with connections[self.admin_alias].cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    def forget(self) -> None:
        """Unregister the alias but keep the database (--keep)."""
        databases.forget(self.alias)
        self.created = False
        self._forget_server()

    def _forget_server(self) -> None:
        if self.server_alias:
            databases.forget(self.server_alias)

    def close(self, keep: bool) -> None:
        if keep:
            self.forget()
        else:
            try:
                self.drop()
            finally:
                self._forget_server()


def _lint_skipped():
    """The linter's --no-lint switch, when the linter is installed."""
    try:
        from .lint import skipped
    except ImportError:  # pragma: no cover - an install without the linter
        return contextlib.nullcontext()
    return skipped(True)


def _setting(key: str):
    from django.conf import settings

    return getattr(settings, "NIXMIG", {}).get(key)


# -- describing differences ----------------------------------------------------------------


def _label(kind: str, name: str) -> str:
    shown = name[7:] if name.startswith("public.") else name
    return f"{kind} `{shown}`"


def _collapse(diffs: list[snapshot.Difference]) -> list[snapshot.Difference]:
    """Drop the columns, constraints, indexes, triggers, policies and row counts of tables that
    are themselves added or removed: "leaves table x behind" says it all."""
    whole = {d.name for d in diffs if d.kind == "table" and d.change in ("added", "removed")}
    if not whole:
        return diffs
    short = {n[7:] if n.startswith("public.") else n for n in whole}
    out = []
    for d in diffs:
        if d.kind in ("column", "constraint", "trigger", "policy") and d.name.rsplit(".", 1)[0] in whole:
            continue
        if d.kind == "rows" and d.name in whole:
            continue
        if d.kind == "index" and d.change in ("added", "removed"):
            text = d.before or d.after or ""
            if any(f" ON {t} " in text or f" ON ONLY {t} " in text for t in whole):
                continue
        if d.kind == "sequence" and d.change in ("added", "removed"):
            text = d.before or d.after or ""
            if any(f"OWNED BY {t}." in text for t in whole | short):
                continue
        out.append(d)
    return out


def explain_down(
    before_up: snapshot.Snapshot, after_up: snapshot.Snapshot, after_down: snapshot.Snapshot
) -> list[Finding]:
    """Say, object by object, how the schema after the down differs from the schema before the up."""
    findings = []
    for d in _collapse(snapshot.diff(before_up, after_down)):
        label = _label(d.kind, d.name)
        in_up = after_up.objects.get((d.kind, d.name))
        if d.kind == "rows":
            fewer = int(d.after) < int(d.before)
            what = (
                f"deletes {int(d.before) - int(d.after)} row(s) of"
                if fewer
                else f"leaves {int(d.after) - int(d.before)} more row(s) in"
            )
            findings.append(
                Finding(
                    "warning",
                    f"down {what} table `{d.display_name}` ({d.before} before the up, "
                    f"{d.after} after the down): seed or existing data is not restored",
                    "down",
                    "table",
                    d.name,
                    d.before,
                    d.after,
                )
            )
        elif d.change == "added":
            if in_up is not None:
                message = f"down leaves {label} behind"
            else:
                message = f"down creates {label}, which did not exist before the up"
            findings.append(Finding("error", message, "down", d.kind, d.name, None, d.after))
        elif d.change == "removed":
            if in_up is not None:
                message = f"down drops {label}, which the up did not create"
            else:
                message = f"down does not restore {label}, which the up dropped"
            findings.append(Finding("error", message, "down", d.kind, d.name, d.before, None))
        else:
            if in_up == d.before:
                message = f"down changes {label}, which the up did not change: {d.before} -> {d.after}"
            else:
                message = f"down does not restore {label}: {d.before} before the up, {d.after} after the down"
            findings.append(Finding("error", message, "down", d.kind, d.name, d.before, d.after))
    return findings


def explain_reup(
    after_up: snapshot.Snapshot, after_reup: snapshot.Snapshot, known_rows: frozenset[str] = frozenset()
) -> list[Finding]:
    """Say how running the up a second time (after its down) gives another schema than the first time.

    Row counts of ``known_rows`` (tables whose rows the down already changed) are not repeated.
    """
    findings = []
    for d in _collapse(snapshot.diff(after_up, after_reup)):
        label = _label(d.kind, d.name)
        if d.kind == "rows" and d.name in known_rows:
            continue
        if d.kind == "rows":
            findings.append(
                Finding(
                    "warning",
                    f"the up run again after its down leaves {d.after} row(s) in table "
                    f"`{d.display_name}`, {d.before} the first time",
                    "reup",
                    "table",
                    d.name,
                    d.before,
                    d.after,
                )
            )
        elif d.change == "added":
            findings.append(
                Finding(
                    "error",
                    f"the up run again after its down also has {label}, which the first run did not",
                    "reup",
                    d.kind,
                    d.name,
                    None,
                    d.after,
                )
            )
        elif d.change == "removed":
            findings.append(
                Finding(
                    "error",
                    f"the up run again after its down lacks {label}, which the first run created",
                    "reup",
                    d.kind,
                    d.name,
                    d.before,
                    None,
                )
            )
        else:
            findings.append(
                Finding(
                    "error",
                    f"the up run again after its down gives another {label}: {d.before} "
                    f"the first time, {d.after} the second",
                    "reup",
                    d.kind,
                    d.name,
                    d.before,
                    d.after,
                )
            )
    return findings


def _failure(exc: MigrationFailed) -> str:
    """The failure message without the advice meant for sqlmigrate_up users."""
    text = str(exc).strip()
    for cut in (" It was rolled back", " Fix the SQL", " Nothing of it stays"):
        at = text.find(cut)
        if at > 0:
            text = text[:at]
    return text.rstrip(".")


# -- verify ----------------------------------------------------------------------------------


class _Run:
    """One verify or drift run: the scratch database and the snapshots taken in it."""

    def __init__(self, tree: Tree, report: VerifyReport, emit: Callback):
        self.tree = tree
        self.report = report
        self.emit = emit
        self.scratch = ScratchDatabase(report.database)
        self.current: snapshot.Snapshot | None = None

    def take(self, *, incremental: bool = True) -> snapshot.Snapshot:
        snap = snapshot.take(
            self.scratch.connection, row_counts=True, previous=self.current if incremental else None
        )
        self.report.snapshots += 1
        self.report.snapshot_seconds += snap.seconds
        self.current = snap
        return snap

    def up(self, to: str, *, fake: bool = False) -> None:
        with _lint_skipped():  # the linter judges production locking, not reversibility: not here
            api.migrate_up(database=self.scratch.alias, to=to, tree=self.tree, fake=fake, lock_wait=0)

    def down(self) -> None:
        api.migrate_down(database=self.scratch.alias, steps=1, tree=self.tree, lock_wait=0)

    def rebuild(self, to: str | None) -> None:
        """Start again from an empty scratch database, applied up to and including ``to``."""
        self.scratch.recreate()
        self.report.scratch = self.scratch.name
        self.emit("rebuild", scratch=self.scratch.name, to=to)
        if to is not None:
            self.up(to)
        self.current = None
        self.take(incremental=False)


def verify(
    *,
    directory=None,
    database: str = "default",
    tree: Tree | None = None,
    start: str | None = None,
    to: str | None = None,
    keep: bool = False,
    store: bool = True,
    progress: Callback | None = None,
) -> VerifyReport:
    """Replay the tree in a scratch database and check every migration's round trip (up, down, up).

    ``start`` / ``to`` limit the migrations checked (ids, inclusive); migrations before
    ``start`` are applied without checks. Results are stored in ``database`` unless ``store``
    is false. Raises NixmigError when it can't run at all (bad tree, no scratch database).
    """
    emit = progress or (lambda event, **data: None)
    started = time.perf_counter()
    tree = tree or api.load_tree(directory)
    tree.raise_for_errors()
    migrations = list(tree.migrations)
    first = _index(tree, start, "--from") if start else 0
    last = _index(tree, to, "--to") if to else len(migrations) - 1
    if first > last:
        raise NixmigError(f"--from {start} comes after --to {to} in run order; swap them.")
    api.connection_for(database)  # a clear error now if the database can't be reached
    for problem in tree.problems:
        if problem.level == "warning":
            emit("warning", message=problem.message)
    report = VerifyReport(database)
    run = _Run(tree, report, emit)
    try:
        run.scratch.create()
        report.scratch = run.scratch.name
        emit("scratch", name=run.scratch.name)
        if first > 0:
            run.up(migrations[first - 1].id)
        run.take(incremental=False)
        checked = migrations[first : last + 1]
        stopped = False
        for index, migration in enumerate(checked, 1):
            if stopped:
                report.results.append(MigrationResult(migration, NOT_RUN))
                continue
            emit("verify_start", index=index, total=len(checked), migration=migration)
            result = _round_trip(run, migration)
            report.results.append(result)
            emit("verify_result", index=index, total=len(checked), result=result)
            stopped = result.result == FAILED
        report.kept = keep
    except (DatabaseError, psycopg.Error) as exc:
        raise _stopped(exc, run) from None
    finally:
        _close(run, keep)
        report.seconds = time.perf_counter() - started
    if store and report.results:
        report.stored = _store(database, report.results, emit)
    return report


def _stopped(exc: Exception, run: _Run) -> NixmigError:
    """A database error outside a migration (connection lost, a catalog read failed), as one paragraph."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return NixmigError(
        f"sqlmigrate_verify stopped: a query outside the migrations failed ({first}); the scratch "
        f"database {run.scratch.name} is dropped. Check that the server is up and run it again."
    )


def _close(run: _Run, keep: bool) -> None:
    """Drop (or keep) the scratch database; a failure to drop it is a warning naming it, not a traceback."""
    name = run.scratch.name
    try:
        run.scratch.close(keep)
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        run.emit(
            "warning",
            message=f"could not drop the scratch database {name} ({first}); drop it by hand: "
            f'DROP DATABASE "{name}"',
        )


def _index(tree: Tree, migration_id: str, option: str) -> int:
    migration = tree.get(migration_id)
    if migration is None:
        raise NixmigError(
            f"{option} {migration_id}: no such migration in {tree.directory}; sqlmigrate_status "
            "lists the ids (module/NNN_name)."
        )
    return tree.migrations.index(migration)


def _round_trip(run: _Run, migration: Migration) -> MigrationResult:
    started = time.perf_counter()
    result = MigrationResult(migration, EXACT)
    before_up = run.current
    try:
        run.up(migration.id)
    except MigrationFailed as exc:
        result.result = FAILED
        result.findings.append(Finding("error", f"the up fails on a clean replay: {_failure(exc)}", "up"))
        result.seconds = time.perf_counter() - started
        return result
    after_up = run.take()
    if migration.down is None:
        result.result = IRREVERSIBLE
        result.findings.append(
            Finding(
                "warning",
                f"irreversible: no down file ({migration.up.relpath} has no "
                "_down.sql beside it); applied once, not rolled back",
                "down",
            )
        )
        result.seconds = time.perf_counter() - started
        return result
    try:
        run.down()
    except MigrationFailed as exc:
        result.result = NOT_EXACT
        result.findings.append(Finding("error", f"the down fails: {_failure(exc)}", "down"))
        if migration.down.directives.no_transaction:
            run.rebuild(migration.id)  # part of a no-transaction down may have run: start again
        else:
            run.current = after_up  # the down was rolled back: the schema is the one after the up
        result.seconds = time.perf_counter() - started
        return result
    after_down = run.take()
    if migration.down.is_empty:
        changed = [d for d in snapshot.diff(before_up, after_up) if d.kind != "rows"]
        if changed:
            result.findings.append(
                Finding(
                    "error",
                    f"the down file {migration.down.relpath} is empty (an explicit no-op), but the up changes "
                    f"the schema ({len(changed)} object(s)): the down does not reverse it",
                    "down",
                )
            )
    result.findings.extend(explain_down(before_up, after_up, after_down))
    rows = frozenset(f.name for f in result.findings if f.phase == "down" and f.level == "warning")
    try:
        run.up(migration.id)
    except MigrationFailed as exc:
        result.findings.append(
            Finding("error", f"the up is not re-runnable after its down: {_failure(exc)}", "reup")
        )
        run.rebuild(migration.id)
    else:
        result.findings.extend(explain_reup(after_up, run.take(), rows))
    levels = {f.level for f in result.findings}
    result.result = NOT_EXACT if "error" in levels else WARNING if levels else EXACT
    result.seconds = time.perf_counter() - started
    return result


# -- drift -----------------------------------------------------------------------------------


def drift(
    *,
    directory=None,
    database: str = "default",
    tree: Tree | None = None,
    keep: bool = False,
    progress: Callback | None = None,
) -> VerifyReport:
    """Compare the live ``database`` (read only) with a scratch database brought to its applied set."""
    emit = progress or (lambda event, **data: None)
    started = time.perf_counter()
    tree = tree or api.load_tree(directory)
    tree.raise_for_errors()
    live = api.connection_for(database)
    status = api.status(tree=tree, database=database, create_table=False)
    applied = {e.id for e in status.entries if e.record is not None and e.migration is not None}
    report = VerifyReport(database)
    result = DriftReport(database, [m.id for m in tree.migrations if m.id in applied])
    for e in status.entries:
        if e.record is not None and e.migration is None:
            result.notes.append(
                f"{e.id} is recorded as applied in {database!r} but has no file in the tree: "
                "the comparison is made without it"
            )
        elif e.state == "changed":
            result.notes.append(
                f"{e.id} was edited after it was applied: the tree side uses the file as it is now"
            )
    run = _Run(tree, report, emit)
    try:
        run.scratch.create()
        report.scratch = run.scratch.name
        emit("scratch", name=run.scratch.name)
        faked = _replay_applied(run, tree, applied)
        if faked:
            result.notes.append(
                f"{len(faked)} migration(s) before the last applied one are not applied in "
                f"{database!r} ({', '.join(faked[:5])}{', ...' if len(faked) > 5 else ''}): "
                "the tree side leaves them out too"
            )
        expected = snapshot.take(run.scratch.connection)
        actual = snapshot.take(live)
        report.snapshots += 2
        report.snapshot_seconds += expected.seconds + actual.seconds
        for d in snapshot.diff(expected, actual):
            {"added": result.only_live, "removed": result.only_tree, "changed": result.different}[
                d.change
            ].append(d)
        report.kept = keep
    except (DatabaseError, psycopg.Error) as exc:
        raise _stopped(exc, run) from None
    finally:
        _close(run, keep)
        report.seconds = time.perf_counter() - started
    report.drift = result
    return report


def _replay_applied(run: _Run, tree: Tree, applied: set[str]) -> list[str]:
    """Apply exactly the applied set, in run order; runs of unapplied files in between are recorded
    without running (fake). Return those."""
    ids = [m.id for m in tree.migrations]
    if not applied:
        return []
    last = max(i for i, mid in enumerate(ids) if mid in applied)
    i = 0
    while i <= last:
        j = i
        while j + 1 <= last and (ids[j + 1] in applied) == (ids[i] in applied):
            j += 1
        run.up(ids[j], fake=ids[i] not in applied)
        i = j + 1
    return [ids[k] for k in range(last + 1) if ids[k] not in applied]


# -- stored results --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResult:
    """The last verify result of one migration, as stored."""

    result: str
    up_checksum: str
    down_checksum: str | None
    verified_at: datetime | None
    findings: int

    def stale(self, migration: Migration | None) -> bool:
        """True when the files were edited since (or are gone)."""
        if migration is None:
            return True
        down = migration.down.checksum if migration.down is not None else None
        return self.up_checksum != migration.up.checksum or self.down_checksum != down

    def label(self, migration: Migration | None) -> str:
        return f"{self.result} (stale)" if self.stale(migration) else self.result


class VerifyStore:
    """The one object that owns ``<tracking table>_verify``: the last verify result per migration."""

    def __init__(self, connection, table: str | None = None):
        self.connection = connection
        parts = (table or conf.table()).split(".")
        quote = connection.ops.quote_name
        self.qtable = ".".join([quote(p) for p in parts[:-1]] + [quote(parts[-1] + "_verify")])

    def create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qtable} (module VARCHAR NOT NULL, name VARCHAR NOT NULL, "
            "up_checksum VARCHAR(64) NOT NULL, down_checksum VARCHAR(64), result VARCHAR(20) NOT NULL, "
            "details JSONB NOT NULL DEFAULT '[]', verified_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (module, name))"
        )

    def save(self, results: list[MigrationResult]) -> None:
        """Insert or replace the results of these migrations, in one transaction."""
        rows = [
            (
                r.migration.module,
                r.migration.name,
                r.migration.up.checksum,
                r.migration.down.checksum if r.migration.down is not None else None,
                r.result,
                json.dumps([f.as_dict() for f in r.findings], ensure_ascii=False),
            )
            for r in results
            if r.result != NOT_RUN
        ]
        if not rows:
            return
        from django.db import transaction

        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
            cursor.execute(self.create_sql())
            cursor.executemany(
                f"INSERT INTO {self.qtable} (module, name, up_checksum, down_checksum, result, details, verified_at) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb, now()) ON CONFLICT (module, name) DO UPDATE SET "
                "up_checksum = EXCLUDED.up_checksum, down_checksum = EXCLUDED.down_checksum, "
                "result = EXCLUDED.result, details = EXCLUDED.details, verified_at = EXCLUDED.verified_at",
                rows,
            )

    def read(self) -> dict[str, StoredResult]:
        """Return the stored results by migration id; {} when verify never ran here. Sends one query
        when the table doesn't exist, two when it does."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [self.qtable])
            if not cursor.fetchone()[0]:
                return {}
            cursor.execute(
                f"SELECT module, name, result, up_checksum, down_checksum, verified_at, "
                f"jsonb_array_length(details) FROM {self.qtable}"
            )
            return {
                f"{m}/{n}" if m else n: StoredResult(r, up, down, at, count)
                for m, n, r, up, down, at, count in cursor.fetchall()
            }


def _store(database: str, results: list[MigrationResult], emit: Callback) -> bool:
    try:
        VerifyStore(connections[database]).save(results)
        return True
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        emit(
            "warning",
            message=f"the results were not stored in database {database!r} ({first}); "
            "sqlmigrate_status will not show them",
        )
        return False


def stored_results(database: str = "default") -> dict[str, StoredResult]:
    """Return the last stored verify result per migration id of ``database`` ({} if none)."""
    try:
        return VerifyStore(connections[database]).read()
    except DatabaseError:
        return {}


def with_results(data: dict, status, stored: dict[str, StoredResult]) -> dict:
    """Add ``"verify": {"result", "stale", "verified_at", "findings"}`` (or None) to each migration of a
    status ``as_dict()``; stale means the up or down file was edited since it was verified."""
    files = {e.id: e.migration for e in status.entries}
    for item in data.get("migrations", ()):
        found = stored.get(item["id"])
        item["verify"] = (
            None
            if found is None
            else {
                "result": found.result,
                "stale": found.stale(files.get(item["id"])),
                "verified_at": found.verified_at.isoformat() if found.verified_at is not None else None,
                "findings": found.findings,
            }
        )
    return data


__all__ = [
    "verify",
    "drift",
    "VerifyReport",
    "MigrationResult",
    "Finding",
    "DriftReport",
    "VerifyStore",
    "StoredResult",
    "stored_results",
    "explain_down",
    "explain_reup",
    "with_results",
]
