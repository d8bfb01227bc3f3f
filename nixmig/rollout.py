"""Roll one job (apply, roll back, status) out to many targets. Never prints: reports through a callback.

``--parallel N`` runs N targets at once on N worker threads; each worker holds at most one
connection at a time (it closes the previous target's connection when it moves to another
database), so a rollout never has more than N connections to a server. Canary targets
run first, all of them, and the rollout stops there if any failed. With ``on_error="stop"``
a failure stops the rollout from starting new targets; targets already running finish.

Ctrl-C (KeyboardInterrupt in the calling thread) stops the rollout the same way, and also
tells every running target to stop before its next migration: the migration that is
running finishes (committed with its record) or, when the process is killed, is rolled
back by PostgreSQL with its record, since each migration is one transaction. A second
Ctrl-C stops waiting. Either way the result lists every target: done, up to date, failed,
interrupted, not started or skipped.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connections

from .exceptions import MigrationFailed, NixmigError
from .targets import Target

DONE, UP_TO_DATE, FAILED, INTERRUPTED, NOT_STARTED, SKIPPED = (
    "done",
    "up_to_date",
    "failed",
    "interrupted",
    "not_started",
    "skipped",
)
STATUSES = (DONE, UP_TO_DATE, FAILED, INTERRUPTED, NOT_STARTED, SKIPPED)
RUNNING = "running"  # only in a report written while the rollout runs (or by a coordinator that died)
RERUN = (FAILED, INTERRUPTED, NOT_STARTED, RUNNING)  # what --only-failed runs again
STOP, CONTINUE = "stop", "continue"

Callback = Callable[..., None]


class RolloutInterrupted(NixmigError):
    """The rollout was interrupted (Ctrl-C) before this target's next migration."""


class ReportError(NixmigError):
    """A rollout report can't be read or written."""


@dataclass
class Outcome:
    """What the job returned for one target: its status, the migrations it applied or rolled back, a summary."""

    status: str = DONE
    applied: list[str] = field(default_factory=list)
    summary: str = ""  # a sentence (the summary of a database's block)
    line: str = ""  # a few words (the line of a tenant: '14 applied in 0.4 s')
    payload: Any = None  # the job's own result (a RunResult, a Status, ...)


@dataclass
class TargetResult:
    """One target's line of the report."""

    target: Target
    status: str = NOT_STARTED
    applied: list[str] = field(default_factory=list)
    summary: str = ""
    line: str = ""
    error: dict | None = None
    seconds: float = 0.0
    payload: Any = None
    reason: str = ""  # why a target was skipped or not started
    extra: dict = field(default_factory=dict)  # what an executor adds (Celery: task id, queue, worker)
    output: tuple[str, str] | None = None  # the job's output where it ran elsewhere (a Celery worker)

    def as_dict(self) -> dict:
        t = self.target
        return {
            "target": t.key,
            "database": None if t.url else t.alias,
            "url": t.url,
            "schema": t.schema,
            "canary": t.canary,
            "status": self.status,
            "applied": list(self.applied),
            "summary": self.summary,
            "error": self.error,
            "reason": self.reason or None,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


@dataclass
class Rollout:
    """Every target's result, in the targets' order, and how the rollout ended."""

    results: list[TargetResult]
    stopped: str | None = None  # None, "canary", "error" or "interrupt"
    seconds: float = 0.0
    started_at: str = ""
    meta: dict = field(default_factory=dict)  # what an executor adds to the report (Celery: how to --resume)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def with_status(self, *statuses: str) -> list[TargetResult]:
        return [r for r in self.results if r.status in statuses]

    @property
    def ok(self) -> bool:
        return not self.with_status(FAILED, INTERRUPTED) and self.stopped is None

    def summary(self, done_label: str = "done") -> str:
        c = self.counts()
        text = (
            f"{len(self.results)} target(s): {c[DONE]} {done_label}, {c[UP_TO_DATE]} up to date, {c[FAILED]} failed, "
            f"{c[NOT_STARTED] + c[SKIPPED]} skipped"
        )
        extra = []
        if c[NOT_STARTED]:
            extra.append(f"{c[NOT_STARTED]} not started")
        if c[INTERRUPTED]:
            extra.append(f"{c[INTERRUPTED]} interrupted")
        if extra:
            text += f" ({', '.join(extra)})"
        return f"{text} in {self.seconds:.1f} s."

    def as_dict(self, **extra) -> dict:
        return {
            **extra,
            **self.meta,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "counts": self.counts(),
            "summary": self.summary(),
            "targets": [r.as_dict() for r in self.results],
        }


def error_of(exc: BaseException) -> dict:
    """Return what a report says about a target's failure: message, migration, file, line, SQLSTATE."""
    if isinstance(exc, MigrationFailed):
        return {
            "message": str(exc),
            "migration": exc.migration_id or None,
            "file": exc.file,
            "line": exc.line,
            "sqlstate": exc.sqlstate,
        }
    message = str(exc) if isinstance(exc, NixmigError) else f"{type(exc).__name__}: {exc}"
    return {
        "message": message,
        "migration": None,
        "file": None,
        "line": None,
        "sqlstate": getattr(getattr(exc, "__cause__", None), "sqlstate", None),
    }


def canaries(targets: list[Target], count: int) -> list[int]:
    """Return the indexes of the canary targets: those marked, else the first ``count``."""
    marked = [i for i, t in enumerate(targets) if t.canary]
    if marked:
        return marked
    return list(range(min(max(count, 0), len(targets))))


def run(
    targets: list[Target],
    job: Callable[[Target, Callback], Outcome],
    *,
    parallel: int = 1,
    canary: int = 0,
    on_error: str = STOP,
    progress_for: Callable[[Target], Callback] | None = None,
    callback: Callback | None = None,
    skipped: list[tuple[str, str]] | None = None,
    executor: Any = None,
    results: list[TargetResult] | None = None,
    meta: dict | None = None,
) -> Rollout:
    """Run ``job(target, progress)`` on every target; return every target's result.

    ``executor`` runs the targets elsewhere instead of on threads of this process
    (``nixmig.tasks.CeleryExecutor``: on Celery workers); ``results`` carries the results of a
    rollout being resumed, where targets that finished keep their result.

    ``progress`` is the callback to give the engine (``api.migrate_up(progress=...)``): it
    forwards to ``progress_for(target)`` and raises RolloutInterrupted before the next
    migration once the rollout is interrupted. ``callback`` gets ``phase`` (name, count),
    ``target_done`` (result, finished, total) and ``stopping`` (reason) events, in the
    calling thread; ``target_done`` and ``dispatched`` also carry the ``rollout`` so far (for a
    report written as results arrive).
    """
    if on_error not in (STOP, CONTINUE):
        raise NixmigError(f"--on-error must be 'stop' or 'continue', not {on_error!r}.")
    if parallel < 1:
        raise NixmigError("--parallel must be 1 or more.")
    emit = callback or (lambda event, **data: None)
    started = time.perf_counter()
    if results is None:
        results = [TargetResult(t) for t in targets]
        results += [TargetResult(Target(key), SKIPPED, reason=reason) for key, reason in skipped or ()]
    rollout = Rollout(results, started_at=datetime.now(UTC).isoformat(timespec="seconds"), meta=meta or {})
    state = _State(job, results, on_error, progress_for, emit, len(targets))
    state.rollout = rollout
    phase = state.phase if executor is None else functools.partial(executor.phase, state)
    try:
        first = canaries(targets, canary) if canary or any(t.canary for t in targets) else []
        first = [i for i in first if results[i].status in (NOT_STARTED, RUNNING)]  # a resumed canary phase
        if first:
            emit("phase", name="canary", count=len(first))
            phase(first, parallel, canary=True)
            failed = [results[i] for i in first if results[i].status in (FAILED, INTERRUPTED)]
            if failed and not state.interrupted.is_set():
                state.stop("canary", f"{len(failed)} of {len(first)} canary target(s) failed")
            if not state.stopped:
                emit("phase", name="rest", count=len(targets) - len(first))
        if not state.stopped:
            chosen = set(first)
            rest = [
                i
                for i in range(len(targets))
                if i not in chosen and results[i].status in (NOT_STARTED, RUNNING)
            ]
            phase(rest, parallel)
    except KeyboardInterrupt:  # the second Ctrl-C, or one between two phases: report what is known
        state.no_more.set()
        state.interrupted.set()
        state.stopped = "interrupt"
        for r in results:
            if r.status == "running":
                r.status, r.reason = (
                    INTERRUPTED,
                    (
                        "still running at the second Ctrl-C: the migration in "
                        "progress is rolled back by PostgreSQL when the process exits"
                    ),
                )
    finally:
        rollout.stopped = state.stopped
        for r in results:
            if r.status == NOT_STARTED and not r.reason:
                r.reason = {
                    "canary": "a canary target failed",
                    "error": "another target failed (--on-error stop)",
                    "interrupt": "the rollout was interrupted",
                }.get(state.stopped or "", "")
        rollout.seconds = time.perf_counter() - started
    return rollout


class _State:
    """The shared state of one rollout: results, the stop flag, and the finished count."""

    def __init__(self, job, results, on_error, progress_for, emit, total):
        self.job = job
        self.results = results
        self.on_error = on_error
        self.progress_for = progress_for
        self.emit = emit
        self.total = total
        self.finished = sum(1 for r in results if r.status not in (NOT_STARTED, RUNNING, SKIPPED))
        self.stopped: str | None = None
        self.rollout: Rollout | None = None
        self.canary_phase = False
        self.interrupted = threading.Event()  # running targets stop before their next migration
        self.no_more = threading.Event()  # no new target starts
        self.lock = threading.Lock()

    def stop(self, reason: str, why: str) -> None:
        self.no_more.set()
        if self.stopped is None:
            self.stopped = reason
            self.emit("stopping", reason=reason, why=why)

    def phase(self, indexes: list[int], parallel: int, canary: bool = False) -> None:
        """Run the targets at ``indexes`` on up to ``parallel`` worker threads; wait for them."""
        if not indexes or self.no_more.is_set():
            return
        self.canary_phase = canary
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in indexes:
            todo.put(i)
        finished: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        workers = [
            threading.Thread(
                target=self._worker, args=(todo, finished), daemon=True, name=f"nixmig-rollout-{n}"
            )
            for n in range(min(parallel, len(indexes)))
        ]
        for w in workers:
            w.start()
        running = len(workers)
        while running:
            try:
                item = finished.get(timeout=0.25)
                if item is None:
                    running -= 1
                    continue
                self.finished += 1
                result = self.results[item]
                if result.status == FAILED and (self.on_error == STOP or canary):
                    self.stop(
                        "canary" if canary else "error",
                        f"canary target {result.target.key} failed"
                        if canary
                        else f"{result.target.key} failed",
                    )
                self.emit(
                    "target_done",
                    result=result,
                    finished=self.finished,
                    total=self.total,
                    rollout=self.rollout,
                )
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                if self.interrupted.is_set():  # the second Ctrl-C: leave the running targets to PostgreSQL
                    raise
                self.interrupted.set()
                self.no_more.set()
                self.stopped = "interrupt"
                self.emit("stopping", reason="interrupt", why="Ctrl-C")

    def _worker(self, todo, finished) -> None:
        alias = None
        try:
            while not self.no_more.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    break
                target = self.results[index].target
                if alias is not None and alias != target.alias:
                    _close(alias)  # at most one connection per worker at any time
                alias = target.alias
                self._one(index)
                finished.put(index)
        finally:
            if alias is not None:
                _close(alias)
            finished.put(None)

    def _one(self, index: int) -> None:
        result = self.results[index]
        target = result.target
        result.status = "running"
        done = result.applied = []  # kept up to date, so a second Ctrl-C still reports what ran
        forward = self.progress_for(target) if self.progress_for else (lambda event, **data: None)

        def progress(event: str, **data) -> None:
            if event in ("plan", "start") and self.interrupted.is_set():
                raise RolloutInterrupted(
                    "Interrupted (Ctrl-C) before the next migration of this target; the "
                    "migrations before it stay applied."
                )
            forward(event, **data)
            if event == "success":
                done.append(data["entry"].id)

        started = time.perf_counter()
        try:
            outcome = self.job(target, progress)
            result.status, result.applied = outcome.status, list(outcome.applied)
            result.summary, result.line, result.payload = outcome.summary, outcome.line, outcome.payload
        except RolloutInterrupted as exc:
            result.status, result.applied, result.error = INTERRUPTED, done, error_of(exc)
            result.reason = "interrupted (Ctrl-C) between two migrations"
        except Exception as exc:  # noqa: BLE001 - one target's failure never stops the others' report
            result.status, result.error = FAILED, error_of(exc)
            result.applied = list(getattr(exc, "applied", ()) or done)
            if self.on_error == STOP or result.target.canary or self.canary_phase:
                self.no_more.set()  # before the next target is taken; the main thread says why
        finally:
            result.seconds = time.perf_counter() - started


def _close(alias: str) -> None:
    """Close this thread's connection to ``alias``, if it has one."""
    try:
        if alias in connections.settings:
            connections[alias].close()
    except Exception:  # noqa: BLE001 - a broken connection is closed already
        pass


# -- reports ---------------------------------------------------------------------------------


def write_report(path: str | Path, rollout: Rollout, **extra) -> None:
    """Write the rollout's JSON report to ``path`` (atomically: a reader never sees half a report)."""
    path = Path(path)
    data = json.dumps(rollout.as_dict(**extra), indent=2, ensure_ascii=False, default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(data + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(
            f"Can't write the report {path} ({exc.strerror or exc}); the rollout itself is done as "
            "shown above. Give --report a path in a writable folder."
        ) from None


def read_report(path: str | Path, option: str = "--only-failed") -> dict:
    """Return a rollout report's data; raise a ReportError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(row, dict) and isinstance(row["target"], str) and isinstance(row["status"], str)
            for row in data["targets"]
        ):
            raise TypeError("no list of targets with their status")
        sources = data.get("sources")
        if sources is not None and not isinstance(sources, dict):
            raise TypeError("'sources' is not an object")
        return data
    except OSError as exc:
        raise ReportError(
            f"Can't read the report {path} ({exc.strerror or exc}); give {option} the file "
            "that --report wrote."
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(
            f"{path} is not a nixmig rollout report ({type(exc).__name__}: {exc}); give "
            f"{option} the JSON file that --report wrote."
        ) from None


def rerun_keys(path: str | Path) -> list[str]:
    """Return the targets of a report that failed, were interrupted, were running or did not start, in its order."""
    return rerun_targets(path)[0]


def rerun_targets(path: str | Path) -> tuple[list[str], dict | None]:
    """Return the report's targets to run again, and the target options its run was given.

    The options (None in a report of an older nixmig) let --only-failed select the targets the
    way the first run did, so credentials come from where they came from then (settings, the
    targets file, the environment), never from the report, which holds none.
    """
    data = read_report(path)
    return [row["target"] for row in data["targets"] if row["status"] in RERUN], data.get("sources")


def rerun_queues(path: str | Path) -> dict[str, str]:
    """Return the Celery queue of each target of a report that names one."""
    return {row["target"]: row["queue"] for row in read_report(path)["targets"] if row.get("queue")}
