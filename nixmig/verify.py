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
import fnmatch
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import psycopg
from django.db import DatabaseError, connections

from . import api, conf, databases, pgerrors, snapshot, sqlnames
from .exceptions import MigrationFailed, NixmigError
from .tree import Migration, Tree

Callback = Callable[..., None]

EXACT = "exact"  # the down restores the schema before the up, and the up runs again to the same schema
WARNING = "warning"  # exact schema, but rows differ (a down that deletes seed rows)
NOT_EXACT = "not exact"  # the round trip leaves a difference, or the up can't run again
IRREVERSIBLE = "irreversible"  # no down file: applied once
FAILED = "failed"  # the up failed on a clean replay; it is recorded without running and the run goes on
NOT_RUN = "not run"  # after a failed up, this up failed too: it may need what the failed one makes
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
    file: str | None = None  # the file that causes it (relative to the tree), set by the round trip

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "phase": self.phase,
            "message": self.message,
            "kind": self.kind,
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "file": self.file,
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


# -- the project's baseline ------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What every scratch database of a run starts from, before the SQL tree.

    Django's own migrations (all of them, or ``django_applied``: the (app, name) pairs a live
    database has), as the test-database template gets them, then the setup steps: SQL files
    and callables that make what a deploy makes outside the tree.
    """

    django: bool = True
    django_applied: frozenset | None = None  # None: every Django migration
    setup: tuple = ()  # Path or callable(connection), in order

    @classmethod
    def for_project(
        cls, setup_sql=(), *, django: bool = True, django_applied: frozenset | None = None
    ) -> Baseline:
        """Return the project's baseline: NIXMIG['VERIFY_SETUP'], then the ``setup_sql`` files."""
        configured = conf.get("VERIFY_SETUP")
        if configured is None:
            configured = ()
        elif callable(configured) or isinstance(configured, str | os.PathLike):
            configured = (configured,)
        steps = []
        for origin, items in (("NIXMIG['VERIFY_SETUP']", configured), ("--setup-sql", setup_sql or ())):
            for item in items:
                if callable(item):
                    steps.append(item)
                    continue
                path = Path(item)
                if not path.is_file():
                    raise NixmigError(
                        f"The setup file {path} ({origin}) does not exist or is not a file; give the path "
                        "of an SQL file that makes what your deploy makes outside the tree."
                    )
                steps.append(path)
        return cls(django, django_applied, tuple(steps))

    def build(self, connection) -> None:
        """Give the (empty) database of ``connection`` Django's migrations, then run the setup steps."""
        if self.django:
            _django_migrate(connection, self.django_applied)
        for step in self.setup:
            if isinstance(step, Path):
                _run_setup_file(connection, step)
                continue
            try:
                step(connection)
            except (DatabaseError, psycopg.Error) as exc:
                raise NixmigError(
                    f"NIXMIG['VERIFY_SETUP'] ({getattr(step, '__qualname__', step)}) failed in the scratch "
                    f"database: {pgerrors.describe(exc)[0]}. Fix it and run sqlmigrate_verify again."
                ) from None


def _django_migrate(connection, applied: frozenset | None) -> None:
    """Apply Django's migrations to ``connection``'s database (``applied``: exactly those), and create
    the tables of apps without migrations, as ``migrate --run-syncdb`` does for a test database."""
    from django.apps import apps
    from django.core.management import call_command
    from django.core.management.base import OutputWrapper
    from django.core.management.commands.migrate import Command as DjangoMigrate
    from django.db.migrations.executor import MigrationExecutor

    try:
        if applied is None:  # Django's own command, as the test-database template runs it
            call_command(
                DjangoMigrate(),
                database=connection.alias,
                run_syncdb=True,
                interactive=False,
                verbosity=0,
                skip_checks=True,
            )
            return
        executor = MigrationExecutor(connection)
        command = DjangoMigrate()
        command.verbosity, command.stdout = 0, OutputWrapper(io.StringIO())
        unmigrated = [c.label for c in apps.get_app_configs() if c.label in executor.loader.unmigrated_apps]
        if unmigrated:
            command.sync_apps(connection, unmigrated)
        targets = executor.loader.graph.leaf_nodes()
        plan = [
            (migration, backwards)
            for migration, backwards in executor.migration_plan(targets, clean_start=True)
            if (migration.app_label, migration.name) in applied
        ]
        if plan:
            executor.migrate(targets, plan=plan)
    except (DatabaseError, psycopg.Error) as exc:
        raise NixmigError(
            f"Django's migrations failed in the scratch database ({pgerrors.describe(exc)[0]}); run "
            "'manage.py migrate' on an empty database to see why."
        ) from None


def _run_setup_file(connection, path: Path) -> None:
    """Run one setup file statement by statement; a failure names the file and line."""
    from .sqltext import analyze
    from .tree import line_of

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NixmigError(
            f"Can't read the setup file {path} ({exc}); give a readable UTF-8 SQL file."
        ) from None
    with connection.cursor() as cursor:
        for statement in analyze(text).statements:
            try:
                cursor.execute(text[statement.start : statement.end])
            except DatabaseError as exc:
                at = pgerrors.position(exc)
                line = line_of(text, statement.start + at) if at is not None else statement.line
                raise NixmigError(
                    f"The setup file {path} failed at line {line}: {pgerrors.describe(exc)[0]}. Nothing of "
                    "the tree was checked; fix the file and run sqlmigrate_verify again."
                ) from None


# -- the scratch database ------------------------------------------------------------------


class ScratchDatabase:
    """A database of its own on the server of ``database`` (or NIXMIG['VERIFY_DATABASE_URL']).

    Made from a template database that holds the run's baseline, built once on the first
    ``create()``; ``renew()`` starts again from it. Registered as a temporary Django
    connection alias, so the API runs migrations there.
    """

    def __init__(self, database: str, baseline: Baseline | None = None):
        self.database = database
        self.baseline = baseline or Baseline(django=False)
        self.prefix = f"nixmig_verify_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.name = self.prefix
        self.alias = self.name
        self.admin_alias = database
        self.server_alias: str | None = None
        self.template: str | None = None  # the baseline
        self.clean: str | None = None  # the clean forward replay, made on the first rebuild
        self.created = False
        self.copies = 0
        self._dropping: list[threading.Thread] = []  # scratch databases being dropped aside
        self.left_over: list[tuple[str, str]] = []  # (name, why) of those that could not be dropped

    @property
    def baseline_name(self) -> str:
        """The baseline database, made by the first create()."""
        if self.template is None:
            raise RuntimeError("the scratch database's baseline is made by create(), not yet called")
        return self.template

    def create(self) -> None:
        if self.template is None:
            self._server()
            template = f"{self.prefix}_base"
            self._create(template, "template0")
            self.template = template
            databases.register(template, self._settings(template))
            try:
                self.baseline.build(connections[template])
            finally:
                databases.forget(template)
        self._create(self.name, self.clean or self.template)
        self.created = True
        databases.register(self.alias, self._settings(self.name))

    def advance_clean(self, move: Callable[[str], None]) -> None:
        """Bring the clean copy forward with ``move(alias)`` (made from the baseline on first use);
        the next ``create()`` copies it.

        The clean copy only ever moves forward (ups, no downs), so the migrations replayed to
        rebuild the scratch database add up to the tree once, however many rebuilds there are.
        """
        if self.clean is None:
            self.clean = f"{self.prefix}_clean"
            self._create(self.clean, self.baseline_name)
        databases.register(self.clean, self._settings(self.clean))
        try:
            move(self.clean)
        finally:
            databases.forget(self.clean)  # nobody may be connected to a template

    def _server(self) -> None:
        url = conf.get("VERIFY_DATABASE_URL")
        if url:
            self.server_alias = f"{self.prefix}_server"
            databases.register(
                self.server_alias, databases.parse_url(str(url), "NIXMIG['VERIFY_DATABASE_URL']")
            )
            self.admin_alias = self.server_alias

    def _settings(self, name: str) -> dict:
        base = connections[self.admin_alias].settings_dict
        settings = dict(base, NAME=name)
        settings["TEST"] = dict(base.get("TEST") or {}, NAME=name)
        return settings

    def _create(self, name: str, template: str) -> None:
        admin = api.connection_for(self.admin_alias)
        for attempt in range(20):
            try:
                with admin.cursor() as cursor:
                    cursor.execute(
                        f"CREATE DATABASE {sqlnames.ident(name)} TEMPLATE {sqlnames.ident(template)}"
                    )
                return
            except DatabaseError as exc:
                if (
                    template != "template0"
                    and getattr(exc.__cause__, "sqlstate", None) == "55006"
                    and attempt < 19
                ):
                    time.sleep(0.05 * (attempt + 1))  # a session is still leaving the template
                    continue
                url = conf.get("VERIFY_DATABASE_URL")
                where = "NIXMIG['VERIFY_DATABASE_URL']" if url else f"database {self.database!r}"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                user = admin.settings_dict.get("USER")
                user = sqlnames.ident(user) if user else "<role>"
                raise ScratchDatabaseError(
                    f"Can't create the scratch database {name} on the server of {where} ({first}). "
                    f"sqlmigrate_verify needs a role that may create databases: grant it with "
                    f"ALTER ROLE {user} CREATEDB, or set NIXMIG['VERIFY_DATABASE_URL'] to a "
                    "server where it may (e.g. a throwaway PostgreSQL in CI)."
                ) from None

    @property
    def connection(self):
        return connections[self.alias]

    def drop_scratch(self) -> None:
        """Drop the scratch database but keep the baseline: the next ``create()`` makes a new one from it."""
        databases.forget(self.alias)
        if self.created:
            with connections[self.admin_alias].cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {sqlnames.ident(self.name)} WITH (FORCE)")
            self.created = False

    def renew(self) -> None:
        """Set the scratch database aside; the next ``create()`` makes another one (a new name).

        The old one is dropped by a thread of its own while the run goes on: DROP DATABASE
        waits for a checkpoint (most of a second on a busy server).
        """
        databases.forget(self.alias)
        if self.created:
            self.created = False
            thread = threading.Thread(
                target=self._drop_aside, args=(self.name,), name="nixmig-verify-drop", daemon=True
            )
            thread.start()
            self._dropping.append(thread)
        self.copies += 1
        self.name = self.alias = f"{self.prefix}_{self.copies}"

    def _drop_aside(self, name: str) -> None:
        admin = connections[self.admin_alias]
        wrapper = type(admin)(dict(admin.settings_dict), alias=f"{self.prefix}_drop")
        try:
            with wrapper.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {sqlnames.ident(name)} WITH (FORCE)")
        except Exception as exc:  # reported by close(): the run itself is not harmed
            self.left_over.append((name, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)))
        finally:
            wrapper.close()

    def wait_for_drops(self) -> None:
        while self._dropping:
            self._dropping.pop().join()

    def _drop_template(self) -> None:
        for name in (self.clean, self.template):
            if name is not None:
                with connections[self.admin_alias].cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS {sqlnames.ident(name)} WITH (FORCE)")
        self.template = self.clean = None

    def drop(self) -> None:
        try:
            self.drop_scratch()
        finally:
            try:
                self._drop_template()
            finally:
                self.wait_for_drops()

    def close(self, keep: bool) -> None:
        """Drop the scratch database (unless ``keep``: then only unregister it) and the baseline."""
        try:
            if keep:
                databases.forget(self.alias)
                self.created = False
            self.drop()
        finally:
            if self.server_alias:
                databases.forget(self.server_alias)


def _lint_skipped():
    """The linter's --no-lint switch, when the linter is installed."""
    try:
        from .lint import skipped
    except ImportError:  # pragma: no cover - an install without the linter
        return contextlib.nullcontext()
    return skipped(True)


# -- describing differences ----------------------------------------------------------------

FROZEN = "a time, date or random value evaluated when the up ran"


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
            rows_before, rows_after = d.row_counts
            what = (
                f"deletes {rows_before - rows_after} row(s) of"
                if rows_after < rows_before
                else f"leaves {rows_after - rows_before} more row(s) in"
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
        elif d.frozen:
            message = f"down restores {label}, which differs only by a value frozen at creation ({FROZEN})"
            findings.append(Finding("warning", message, "down", d.kind, d.name, d.before, d.after))
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
        elif d.frozen:
            findings.append(
                Finding(
                    "warning",
                    f"the up run again after its down gives {label} that differs only by a value frozen "
                    f"at creation ({FROZEN})",
                    "reup",
                    d.kind,
                    d.name,
                    d.before,
                    d.after,
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

    def __init__(
        self, tree: Tree, report: VerifyReport, emit: Callback, baseline: Baseline, schema: str | None = None
    ):
        self.tree = tree
        self.report = report
        self.emit = emit
        self.schema = schema
        self.scratch = ScratchDatabase(report.database, baseline)
        self.exclude = own_tables(schema)
        self.current: snapshot.Snapshot | None = None
        self.session: api.Session | None = None
        # migrations whose up failed: recorded without running, so the run goes on
        self.skipped: list[str] = []
        self.position = {m.id: i for i, m in enumerate(tree.migrations)}

    def take(self, *, incremental: bool = True) -> snapshot.Snapshot:
        snap = snapshot.take(
            self.scratch.connection,
            exclude_tables=self.exclude,
            row_counts=True,
            previous=self.current if incremental else None,
        )
        self.report.snapshots += 1
        self.report.snapshot_seconds += snap.seconds
        self.current = snap
        return snap

    def up(self, to: str, *, fake: bool = False) -> None:
        with _lint_skipped():  # the linter judges production locking, not reversibility: not here
            self.open_session.up(to=to, fake=fake)

    def down(self) -> None:
        self.new_command()
        self.open_session.down(steps=1)

    @property
    def open_session(self) -> api.Session:
        """The session start() opened, that every step runs in."""
        if self.session is None:
            raise RuntimeError("verify runs a migration only in the session start() opens")
        return self.session

    @property
    def schema_now(self) -> snapshot.Snapshot:
        """The scratch database's schema now: taken (or known) after every step since start()."""
        if self.current is None:
            raise RuntimeError("verify takes a snapshot after start(), before any migration runs")
        return self.current

    def new_command(self) -> None:
        """Drop the session state a command leaves (temporary tables): in production the down, and
        the up run again after it, are other commands on other connections."""
        with self.scratch.connection.cursor() as cursor:
            cursor.execute("DISCARD TEMP")

    def start(self) -> None:
        """Make the scratch database from the baseline, laid out as the target (its schema made), and
        open the one session (lock, tracking table read once) that every step runs in."""
        self.scratch.create()
        self.report.scratch = self.scratch.name
        self.session = api.session(
            self.scratch.alias,
            tree=self.tree,
            schema=self.schema,
            create_schema=bool(self.schema),
            lock_wait=0,
            command="sqlmigrate_verify",
        ).__enter__()

    def stop(self) -> None:
        """Close the session (release its lock) before the scratch database is dropped."""
        session, self.session = self.session, None
        if session is not None:
            session.__exit__(None, None, None)

    def rebuild(self, to: str) -> None:
        """Start again from the state a clean forward replay up to and including ``to`` gives."""
        self.stop()
        self.scratch.renew()
        self.scratch.advance_clean(lambda alias: self._replay(alias, to))
        self.start()
        self.emit("rebuild", scratch=self.scratch.name, to=to)
        self.current = None
        self.take(incremental=False)

    def _replay(self, alias: str, to: str) -> None:
        with (
            api.session(
                alias,
                tree=self.tree,
                schema=self.schema,
                create_schema=bool(self.schema),
                lock_wait=0,
                command="sqlmigrate_verify",
            ) as clean,
            _lint_skipped(),
        ):
            for failed in self.skipped:  # never run them: record them, as the scratch database did
                at = self.position[failed]
                if at > self.position[to]:
                    break
                if at > 0:
                    clean.up(to=self.tree.migrations[at - 1].id)
                clean.up(to=failed, fake=True)
            clean.up(to=to)

    def skip(self, migration: Migration) -> None:
        """Record a migration whose up failed as applied without running it, so the migrations after
        it are still checked (on a state without it)."""
        self.skipped.append(migration.id)
        if migration.up.directives.no_transaction:
            self.rebuild(migration.id)  # part of it may have run: start again from a clean replay
        else:
            self.up(migration.id, fake=True)  # it was rolled back: only the tracking table changes


def own_tables(schema: str | None = None) -> tuple[str, ...]:
    """Return nixmig's own tables that snapshots leave out (those of a schema target too)."""
    tables = snapshot.nixmig_tables()
    if schema:
        tables += snapshot.nixmig_tables(f"{schema}.{conf.table().rsplit('.', 1)[-1]}")
    return tables


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
    schema: str | None = None,
    setup_sql: Iterable = (),
) -> VerifyReport:
    """Replay the tree in a scratch database and check every migration's round trip (up, down, up).

    The scratch database starts from the project's baseline: Django's own migrations, then
    NIXMIG['VERIFY_SETUP'] and the ``setup_sql`` files. ``schema`` lays the tree out in that
    schema, as for a schema target. Each migration is judged on the state a clean forward
    replay gives: after a round trip that is not exact, the scratch database is rebuilt.
    ``start`` / ``to`` limit the migrations checked (ids, inclusive); migrations before
    ``start`` are applied without checks. Results are stored in ``database`` unless ``store``
    is false (or ``schema`` is given). Raises NixmigError when it can't run at all (bad tree,
    no scratch database, a failing setup file).
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
    baseline = Baseline.for_project(setup_sql)
    api.connection_for(database)  # a clear error now if the database can't be reached
    for problem in tree.problems:
        if problem.level == "warning":
            emit("warning", message=problem.message)
    report = VerifyReport(database)
    run = _Run(tree, report, emit, baseline, schema)
    try:
        run.start()
        emit("scratch", name=run.scratch.name)
        if first > 0:
            run.up(migrations[first - 1].id)
        run.take(incremental=False)
        checked = migrations[first : last + 1]
        for index, migration in enumerate(checked, 1):
            emit("verify_start", index=index, total=len(checked), migration=migration)
            result = _round_trip(run, migration)
            report.results.append(result)
            emit("verify_result", index=index, total=len(checked), result=result)
        report.kept = keep
    except (DatabaseError, psycopg.Error) as exc:
        raise _stopped(exc, run) from None
    finally:
        _close(run, keep)
        report.seconds = time.perf_counter() - started
    if store and not schema and report.results:
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
    with contextlib.suppress(NixmigError, DatabaseError):  # a lost connection took the lock with it
        run.stop()
    try:
        run.scratch.close(keep)
        for left, why in run.scratch.left_over:
            run.emit(
                "warning",
                message=f"could not drop the scratch database {left} ({why}); drop it by hand: "
                f"DROP DATABASE {sqlnames.ident(left)}",
            )
    except DatabaseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        run.emit(
            "warning",
            message=f"could not drop the scratch database {name} ({first}); drop it by hand: "
            f"DROP DATABASE {sqlnames.ident(name)}",
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
    up_file = migration.up.relpath
    down_file = migration.down.relpath if migration.down is not None else None
    before_up = run.schema_now
    try:
        run.up(migration.id)
    except MigrationFailed as exc:
        earlier = run.skipped[0] if run.skipped else None
        if earlier is None:
            result.result = FAILED
            message = f"the up fails on a clean replay: {_failure(exc)}"
        else:  # it may only need what the earlier one makes: not blamed, not checked
            result.result = NOT_RUN
            message = (
                f"not checked: its up fails without {earlier}, whose up failed before it: {_failure(exc)}"
            )
        result.findings.append(Finding("error", message, "up", file=up_file))
        run.skip(migration)
        result.seconds = time.perf_counter() - started
        return result
    after_up = run.take()
    if migration.down is None:
        result.result = IRREVERSIBLE
        result.findings.append(
            Finding(
                "warning",
                f"irreversible: no down file ({up_file} has no _down.sql beside it); applied once, not rolled back",
                "down",
                file=up_file,
            )
        )
        result.seconds = time.perf_counter() - started
        return result
    try:
        run.down()
    except MigrationFailed as exc:
        result.result = NOT_EXACT
        result.findings.append(Finding("error", f"the down fails: {_failure(exc)}", "down", file=down_file))
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
                    f"the down file {down_file} is empty (an explicit no-op), but the up changes "
                    f"the schema ({len(changed)} object(s)): the down does not reverse it",
                    "down",
                )
            )
    result.findings.extend(explain_down(before_up, after_up, after_down))
    rows = frozenset(f.name for f in result.findings if f.phase == "down" and f.level == "warning")
    try:
        run.new_command()
        run.up(migration.id)
    except MigrationFailed as exc:
        result.findings.append(
            Finding("error", f"the up is not re-runnable after its down: {_failure(exc)}", "reup")
        )
        run.rebuild(migration.id)
    else:
        after_reup = run.take()
        result.findings.extend(explain_reup(after_up, after_reup, rows))
        if any(not d.frozen for d in snapshot.diff(after_up, after_reup)):
            # The next migration is judged on the state a clean forward replay gives, never on
            # what this one's down (and up again) left: start again from the baseline.
            run.rebuild(migration.id)
    # A difference after the down is the down file's; one after the up ran again is the down
    # file's too when the down already left a difference, else the up file's (it is not re-runnable).
    down_wrong = any(f.phase == "down" for f in result.findings)
    result.findings = [
        f if f.file else replace(f, file=down_file if f.phase == "down" or down_wrong else up_file)
        for f in result.findings
    ]
    levels = {f.level for f in result.findings}
    result.result = NOT_EXACT if "error" in levels else WARNING if levels else EXACT
    result.seconds = time.perf_counter() - started
    return result


# -- drift -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DjangoState:
    """Which of Django's migrations a live database has (read only)."""

    has_table: bool
    applied: frozenset
    unapplied: tuple[str, ...]  # "app.name", in run order


def django_state(connection) -> DjangoState:
    """Return the Django migrations applied in ``connection``'s database and those of the project it lacks."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.recorder import MigrationRecorder

    if not MigrationRecorder(connection).has_table():
        return DjangoState(False, frozenset(), ())
    executor = MigrationExecutor(connection)  # reads django_migrations; writes nothing
    applied = frozenset(executor.loader.applied_migrations)
    graph = executor.loader.graph
    unapplied = tuple(
        f"{m.app_label}.{m.name}"
        for m, _ in executor.migration_plan(graph.leaf_nodes(), clean_start=True)
        if (m.app_label, m.name) not in applied
    )
    return DjangoState(True, applied, unapplied)


def drift(
    *,
    directory=None,
    database: str = "default",
    tree: Tree | None = None,
    keep: bool = False,
    progress: Callback | None = None,
    schema: str | None = None,
    setup_sql: Iterable = (),
    ignore: Iterable[str] = (),
) -> VerifyReport:
    """Compare the live ``database`` (read only) with the project's baseline brought to its applied set.

    The baseline has the Django migrations the live database has (so objects they make are
    never drift) and the setup steps; the SQL migrations applied there are replayed on it.
    ``schema`` compares that schema target only. Objects whose names match a pattern of
    NIXMIG['DRIFT_IGNORE'] or ``ignore`` are left out, and so are definitions that differ
    only by a value frozen at creation (both with a note).
    """
    emit = progress or (lambda event, **data: None)
    started = time.perf_counter()
    tree = tree or api.load_tree(directory)
    tree.raise_for_errors()
    live = api.connection_for(database)
    api.require_schema(live, schema)
    status = api.status(tree=tree, database=database, create_table=False, schema=schema)
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
    django = django_state(live)
    if django.unapplied and django.has_table:
        shown = ", ".join(django.unapplied[:5]) + (", ..." if len(django.unapplied) > 5 else "")
        result.notes.append(
            f"{len(django.unapplied)} Django migration(s) are not applied in database {database!r} ({shown}): "
            "the comparison leaves them out too; run 'manage.py migrate' to apply them."
        )
    baseline = Baseline.for_project(
        setup_sql,
        django=django.has_table,
        django_applied=django.applied if django.unapplied else None,
    )
    patterns = [str(p) for p in (conf.get("DRIFT_IGNORE") or ())] + [str(p) for p in ignore]
    run = _Run(tree, report, emit, baseline, schema)
    try:
        run.start()
        emit("scratch", name=run.scratch.name)
        faked = _replay_applied(run, tree, applied)
        if faked:
            result.notes.append(
                f"{len(faked)} migration(s) before the last applied one are not applied in "
                f"{database!r} ({', '.join(faked[:5])}{', ...' if len(faked) > 5 else ''}): "
                "the tree side leaves them out too"
            )
        expected = snapshot.take(run.scratch.connection, exclude_tables=run.exclude)
        actual = snapshot.take(live, exclude_tables=run.exclude)
        report.snapshots += 2
        report.snapshot_seconds += expected.seconds + actual.seconds
        frozen, ignored = [], 0
        for d in _collapse(snapshot.diff(_in_schema(expected, schema), _in_schema(actual, schema))):
            if ignores(d, patterns):
                ignored += 1
            elif d.frozen:
                frozen.append(d)
            else:
                {"added": result.only_live, "removed": result.only_tree, "changed": result.different}[
                    d.change
                ].append(d)
        if frozen:
            result.notes.append(
                f"{len(frozen)} object(s) differ only by a value frozen at creation ({FROZEN}), "
                f"not counted as drift: {', '.join(f'{d.kind} {d.display_name}' for d in frozen[:5])}"
                f"{', ...' if len(frozen) > 5 else ''}"
            )
        if ignored:
            result.notes.append(
                f"{ignored} difference(s) left out by the ignore patterns ({', '.join(patterns)})"
            )
        report.kept = keep
    except (DatabaseError, psycopg.Error) as exc:
        raise _stopped(exc, run) from None
    finally:
        _close(run, keep)
        report.seconds = time.perf_counter() - started
    report.drift = result
    return report


def _in_schema(snap: snapshot.Snapshot, schema: str | None) -> snapshot.Snapshot:
    """Keep only the objects of ``schema`` (a schema target's drift leaves other tenants out)."""
    if not schema:
        return snap
    prefix = schema + "."
    return snapshot.Snapshot(
        {
            (k, n): d
            for (k, n), d in snap.objects.items()
            if n.startswith(prefix) or (k == "schema" and n == schema)
        }
    )


def ignores(difference: snapshot.Difference, patterns: Iterable[str]) -> bool:
    """True when a pattern matches the object's name (with or without its schema) or the name of
    the table or schema it belongs to (``legacy_*`` leaves out table legacy_x, its columns and indexes)."""
    patterns = list(patterns)
    if not patterns:
        return False
    parts = difference.name.split(".")
    names = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    names |= {".".join(parts[1:i]) for i in range(2, len(parts) + 1)}
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


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
        self.qtable = sqlnames.table(table or conf.table(), "_verify")

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
