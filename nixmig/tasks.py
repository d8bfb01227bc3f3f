"""Roll a job out to many targets on Celery workers: the tasks, and the executor that dispatches them.

A task runs one command's job (up, down, status, lint, verify) on one target, exactly as the
thread executor does in-process: the worker builds the management command and runs its job
for that target. Each task carries the migrations directory as the coordinator was given it
and the digest of the tree it planned with (ids and checksums); a worker whose tree differs
refuses the target, which is reported as failed with that reason. Tasks are acknowledged
late and rejected when their worker is lost, so the broker hands a target whose worker died
to another worker; nixmig's lock and per-migration transactions make the second run safe.

No result backend is needed: a task sends ``started`` and ``finished`` messages to a reply
queue of the rollout on the broker, and the tracking table of each target stays the truth.
The coordinator (``CeleryExecutor``) acknowledges a reply only once the report that includes
it is written, so a coordinator that dies loses nothing: ``--resume REPORT`` re-attaches.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import CeleryError
from kombu import Connection, Consumer, Queue
from kombu.exceptions import KombuError, OperationalError

from . import conf
from .exceptions import NixmigError
from .rollout import (
    CONTINUE,
    DONE,
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    RUNNING,
    STOP,
    UP_TO_DATE,
    Outcome,
    RolloutInterrupted,
    TargetResult,
    error_of,
)
from .targets import Target

TASKS = {
    "sqlmigrate_up": "nixmig.up",
    "sqlmigrate_down": "nixmig.down",
    "sqlmigrate_status": "nixmig.status",
    "sqlmigrate_lint": "nixmig.lint",
    "sqlmigrate_verify": "nixmig.verify",
}
# Options that choose or steer the rollout: the coordinator's business, never a worker's.
COORDINATOR_OPTIONS = {
    "stdout",
    "stderr",
    "no_color",
    "force_color",
    "skip_checks",
    "traceback",
    "settings",
    "pythonpath",
    "executor",
    "resume",
    "report",
    "only_failed",
    "canary",
    "on_error",
    "parallel",
    "targets_file",
    "database",
    "schemas",
    "schemas_query",
    "all_databases",
    "check",
}
REPLY_PREFIX = "nixmig.replies."
# Revoked with this suffix too, a running task stops before its next migration (Ctrl-C on the coordinator);
# revoked alone (a stop after a failure), a task that already started finishes.
INTERRUPT = ":interrupt"
WAIT_WARNING = 30.0  # seconds without any reply before the coordinator says which queues wait


class BrokerUnavailable(NixmigError):
    """The Celery broker can't be reached; nothing was dispatched."""


# -- the worker's side -----------------------------------------------------------------------------


def _task(name: str):
    return shared_task(
        bind=True,
        name=name,
        acks_late=True,  # acknowledged when the target is finished, not when it is received
        reject_on_worker_lost=True,  # a killed worker's target goes back to the queue
        ignore_result=True,  # outcomes travel on the rollout's reply queue; no result backend needed
    )


@_task("nixmig.up")
def up(self, target: dict, options: dict, context: dict) -> None:
    """Apply the pending migrations of one target (sqlmigrate_up's job)."""
    run_target(self, "sqlmigrate_up", target, options, context)


@_task("nixmig.down")
def down(self, target: dict, options: dict, context: dict) -> None:
    """Roll back migrations of one target (sqlmigrate_down's job)."""
    run_target(self, "sqlmigrate_down", target, options, context)


@_task("nixmig.status")
def status(self, target: dict, options: dict, context: dict) -> None:
    """Read the status of one target (sqlmigrate_status's job)."""
    run_target(self, "sqlmigrate_status", target, options, context)


@_task("nixmig.lint")
def lint(self, target: dict, options: dict, context: dict) -> None:
    """Lint the pending migrations of one target (sqlmigrate_lint's job)."""
    run_target(self, "sqlmigrate_lint", target, options, context)


@_task("nixmig.verify")
def verify(self, target: dict, options: dict, context: dict) -> None:
    """Verify the round trips of one database target (sqlmigrate_verify's job)."""
    run_target(self, "sqlmigrate_verify", target, options, context)


def run_target(task, command: str, target: dict, options: dict, context: dict) -> None:
    """Run ``command``'s job on one target in this worker; send ``started`` and ``finished`` replies."""
    delivery = uuid.uuid4().hex
    info = task.request.delivery_info or {}
    here = {
        "task_id": task.request.id,
        "target": context["key"],
        "delivery": delivery,
        "worker": task.request.hostname or socket.gethostname(),
        "pid": os.getpid(),
    }
    reply = _replier(task.app, context["reply_to"])
    reply(dict(here, event="started", redelivered=bool(info.get("redelivered"))))
    result = TargetResult(Target(target["alias"], target.get("schema"), target.get("url")))
    output = ("", "")
    started = time.perf_counter()
    try:
        outcome, output = _run_job(task, command, result, target, options, context)
        result.status, result.applied = outcome.status, list(outcome.applied)
        result.summary, result.line = outcome.summary, outcome.line
        wanted = options.get("json") and hasattr(outcome.payload, "as_dict")  # status --json prints it
        payload = outcome.payload.as_dict() if wanted else None
    except RolloutInterrupted as exc:
        result.status, result.error = INTERRUPTED, error_of(exc)
        result.reason = "interrupted (Ctrl-C on the coordinator) between two migrations"
        output, payload = getattr(exc, "output", output), None
    except Exception as exc:  # noqa: BLE001 - the target's failure is its outcome, reported to the coordinator
        result.status, result.error = FAILED, error_of(exc)
        result.applied = list(getattr(exc, "applied", ()) or result.applied)
        output, payload = getattr(exc, "output", output), None
    result.seconds = time.perf_counter() - started
    reply(
        dict(
            here,
            event="finished",
            status=result.status,
            applied=result.applied,
            summary=result.summary,
            line=result.line,
            error=result.error,
            reason=result.reason,
            seconds=result.seconds,
            stdout=output[0] if context.get("output", True) else "",
            stderr=output[1] if context.get("output", True) else "",
            payload=payload,
        )
    )


def _run_job(task, command, result, target, options, context) -> tuple[Outcome, tuple[str, str]]:
    """Build the management command and run its job on this one target; return the outcome and its output."""
    from django.core.management import load_command_class
    from django.core.management.base import OutputWrapper
    from django.core.management.color import no_style

    from . import targets as target_sources
    from .management.base import NixmigCommand
    from .rollout import _close

    if target.get("url"):
        alias = target_sources.register_url(target["url"], f"target {context['key']}")
    else:
        alias = target["alias"]
        from django.db import connections

        if alias not in connections.settings:
            raise NixmigError(
                f"Worker {task.request.hostname}: there is no database {alias!r} in its settings.DATABASES; "
                "nothing was run. Give the workers the same DATABASES as the coordinator, or use database "
                "URLs (the worker's password comes from its environment: PGPASSWORD, ~/.pgpass or a service file)."
            )
    one = Target(alias, target.get("schema"), target.get("url"), target.get("canary", False))
    result.target = one
    cmd = load_command_class("nixmig", command)
    assert isinstance(cmd, NixmigCommand)
    out, err = io.StringIO(), io.StringIO()
    cmd.stdout, cmd.stderr, cmd.style = OutputWrapper(out), OutputWrapper(err), no_style()
    parser = cmd.create_parser("manage.py", command)
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    run_options = dict(defaults, **options, interactive=False)
    revoked = _revocations()
    applied = result.applied

    def progress(event: str, **data) -> None:
        if event in ("plan", "start") and task.request.id + INTERRUPT in revoked():
            raise RolloutInterrupted(
                "Interrupted (Ctrl-C on the coordinator) before the next migration of this target; the "
                "migrations before it stay applied."
            )
        if event == "success":
            applied.append(data["entry"].id)
        cmd.renderer(event, **data)

    cmd.worker = (one, progress, context["digest"])
    try:
        cmd.handle(**run_options)
        outcome = cmd.worker_outcome
        assert outcome is not None
    except Exception as exc:
        exc.output = (out.getvalue(), err.getvalue())  # type: ignore[attr-defined]
        raise
    finally:
        _close(alias)
    return outcome, (out.getvalue(), err.getvalue())


def _revocations() -> Callable[[], Any]:
    """Return a function giving the ids this worker was told to revoke (a thread or solo pool sees them)."""
    try:
        from celery.worker import state

        return lambda: state.revoked
    except ImportError:  # pragma: no cover - celery always has it
        return frozenset


def _replier(app, queue: str) -> Callable[[dict], None]:
    def reply(body: dict) -> None:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                serializer="json",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5},
            )

    return reply


def check_tree(digest: str, tree, worker: str) -> None:
    """Refuse a target when this worker's tree is not the one the coordinator planned with."""
    from .tree import digest as digest_of

    mine = digest_of(tree)
    if mine != digest:
        raise NixmigError(
            f"Worker {worker} refused the target: its migration tree {tree.directory} is not the one the "
            f"coordinator planned with (digest {mine}, planned {digest}: an older or newer deploy). Nothing "
            "was run there. Deploy the same tree to every worker, then run again with --only-failed."
        )


# -- the coordinator's side -------------------------------------------------------------------------


def celery_app():
    """Return the project's Celery app: NIXMIG['ROLLOUT']['CELERY_APP'], the current app, or <project>.celery."""
    import importlib

    from celery import _state

    path = conf.rollout("CELERY_APP")
    if path:
        from django.utils.module_loading import import_string

        try:
            return import_string(path)
        except ImportError as exc:
            raise NixmigError(
                f"NIXMIG['ROLLOUT']['CELERY_APP'] = {path!r} can't be imported ({exc}); name the project's "
                "Celery app, e.g. 'myproject.celery.app'."
            ) from None
    app = _state._tls.current_app
    if app is not None and app is not _state.default_app:
        return app
    package = (os.environ.get("DJANGO_SETTINGS_MODULE") or "").rpartition(".")[0]
    if package:
        try:
            module = importlib.import_module(f"{package}.celery")
            found = getattr(module, "app", None) or getattr(module, "celery_app", None)
            if found is not None:
                return found
        except ImportError:
            pass
    raise NixmigError(
        "--executor celery needs the project's Celery app, and none was found: define it in "
        f"{package or 'yourproject'}/celery.py as the Celery docs show (app = Celery(...); "
        "app.config_from_object('django.conf:settings', namespace='CELERY')), import it in the package's "
        "__init__.py, or set NIXMIG['ROLLOUT']['CELERY_APP'] to its dotted path."
    )


def queue_for(target: Target) -> str:
    """Return the queue of a target: its own ([queue=NAME]), else NIXMIG['ROLLOUT']['QUEUE'] (a name or a callable)."""
    if target.queue:
        return target.queue
    value = conf.rollout("QUEUE")
    name = value(target) if callable(value) else value
    if not isinstance(name, str) or not name:
        raise NixmigError(
            f"NIXMIG['ROLLOUT']['QUEUE'] gave {name!r} for target {target.key}; it must give a queue name."
        )
    return name


def describe_broker(app) -> str:
    """Return the broker URL without its password."""
    from .targets import without_password

    url = app.conf.broker_url
    url = url[0] if isinstance(url, (list, tuple)) and url else url
    return without_password(url) if isinstance(url, str) and url else "the default broker (amqp://localhost)"


class CeleryExecutor:
    """Dispatch each target's task to its queue and collect the workers' replies (``rollout.run(executor=)``).

    ``phase(state, indexes, parallel, canary)`` has the thread executor's semantics: it returns when
    every target of the phase finished, or when the rollout stopped (a failure with --on-error stop,
    a canary, Ctrl-C) and the targets already running finished; targets not started are revoked.
    """

    def __init__(
        self,
        app,
        command: str,
        options: dict,
        digest: str,
        *,
        rollout_id: str | None = None,
        dispatch_new: bool = True,
        grace: float = 1.0,
    ):
        if command not in TASKS:
            raise NixmigError(
                f"{command} has no Celery task; --executor celery works with {', '.join(TASKS)}."
            )
        self.app = app
        self.command = command
        self.task_name = TASKS[command]
        self.options = {k: v for k, v in options.items() if k not in COORDINATOR_OPTIONS}
        self.options["directory"] = None if options.get("directory") is None else str(options["directory"])
        self.digest = digest
        self.rollout_id = rollout_id or uuid.uuid4().hex[:16]
        self.reply_queue = REPLY_PREFIX + self.rollout_id
        self.grace = grace
        self.connection: Connection | None = None
        self.consumer: Consumer | None = None
        self.by_task: dict[str, int] = {}
        self.deliveries: dict[int, set[str]] = {}
        self.unacked: list = []
        self.last_reply = time.monotonic()
        self.revoked: set[str] = set()
        self.dispatch_new = dispatch_new  # False when resuming a rollout that had stopped
        self.next_write = 0.0
        self.want_output = True  # False: the coordinator shows one line per target, not the job's output

    # -- connection ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the broker and declare the reply queue; raise BrokerUnavailable before anything is sent."""
        if self.connection is not None:
            return
        connection = self.app.connection_for_write()
        try:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=10)
            queue = Queue(self.reply_queue, durable=True, auto_delete=False, no_ack=False)
            self.consumer = Consumer(connection, queues=[queue], callbacks=[self._on_reply], accept=["json"])
            self.consumer.qos(prefetch_count=0)
            self.consumer.consume()
        except (OSError, KombuError, CeleryError) as exc:
            connection.release()
            raise BrokerUnavailable(
                f"Can't reach the Celery broker at {describe_broker(self.app)} ({exc}); nothing was dispatched and no "
                "target was touched. Start the broker or fix CELERY_BROKER_URL (the Celery app's broker_url), then "
                "run the command again."
            ) from None
        self.connection = connection

    def meta(self) -> dict:
        return {
            "executor": "celery",
            "celery": {
                "rollout": self.rollout_id,
                "reply_queue": self.reply_queue,
                "task": self.task_name,
                "digest": self.digest,
                "options": self.options,
            },
        }

    def close(self, keep_queue: bool) -> None:
        """Acknowledge what was read, delete the reply queue unless a task may still answer, disconnect."""
        if self.connection is None:
            return
        try:
            self._ack()
            if not keep_queue and self.consumer is not None:
                self.consumer.cancel()
                for queue in self.consumer.queues or ():
                    queue(self.connection.default_channel).delete()
        except (OSError, KombuError):
            pass
        finally:
            self.connection.release()
            self.connection = None

    # -- one phase ------------------------------------------------------------------------------

    def phase(self, state, indexes: list[int], parallel: int = 1, canary: bool = False) -> None:
        """Run the targets at ``indexes`` on the workers; wait for them (see the class docstring)."""
        if not indexes or state.no_more.is_set():
            return
        state.canary_phase = canary
        self.state = state
        self.connect()
        waiting = set()
        try:
            with self.app.producer_or_acquire() as producer:
                for i in indexes:
                    if state.no_more.is_set():
                        break
                    if self._dispatch(state.results[i], i, producer):
                        waiting.add(i)
        except (OSError, KombuError, CeleryError) as exc:
            state.stop(
                "broker", f"the broker at {describe_broker(self.app)} failed while dispatching ({exc})"
            )
        except KeyboardInterrupt:
            self._interrupt(state, waiting)
        state.emit("dispatched", rollout=state.rollout)
        self._wait(state, waiting)

    def _dispatch(self, result: TargetResult, index: int, producer) -> bool:
        """Send a target's task (unless the coordinator this one resumes did); return whether a reply will come."""
        task_id = result.extra.get("task_id")
        if task_id:  # dispatched by the coordinator this one resumes
            self.by_task[task_id] = index
            return not result.extra.get("revoked")
        if not self.dispatch_new:
            return False
        t = result.target
        queue = queue_for(t)
        task_id = uuid.uuid4().hex
        self.by_task[task_id] = index
        result.extra.update(task_id=task_id, queue=queue, worker=None, deliveries=0)
        self.app.send_task(
            self.task_name,
            args=(
                {"alias": t.alias, "schema": t.schema, "url": t.url, "canary": t.canary},
                self.options,
                {
                    "key": t.key,
                    "digest": self.digest,
                    "reply_to": self.reply_queue,
                    "rollout": self.rollout_id,
                    "output": self.want_output,
                },
            ),
            task_id=task_id,
            queue=queue,
            routing_key=queue,
            producer=producer,
        )
        return True

    def _wait(self, state, waiting: set[int]) -> None:
        self.waiting = waiting
        stopped_at = None
        warned = time.monotonic()
        while True:
            open_ = [
                i
                for i in waiting
                if state.results[i].status == RUNNING
                or (state.results[i].status == NOT_STARTED and not state.results[i].extra.get("revoked"))
            ]
            if state.no_more.is_set():
                self._revoke_unstarted(state, open_)
                stopped_at = stopped_at or time.monotonic()
                running = [i for i in open_ if state.results[i].status == RUNNING]
                if not running and time.monotonic() - stopped_at > self.grace:
                    break  # revoked ones stay not started; a late 'started' would have come by now
            elif not open_:
                break
            assert self.connection is not None
            try:
                self.connection.drain_events(timeout=0.25)
            except TimeoutError:
                pass
            except (OSError, OperationalError) as exc:
                self._broker_lost(state, exc)
                self.connection = None
                return
            except KeyboardInterrupt:
                if state.interrupted.is_set():  # the second Ctrl-C: stop waiting for the workers
                    for i in waiting:
                        r = state.results[i]
                        if r.status == RUNNING:
                            r.status, r.extra["detached"] = INTERRUPTED, True
                            r.reason = (
                                f"still running on {r.extra.get('worker') or 'a worker'} when the coordinator "
                                "stopped waiting; its tracking table says what ran (sqlmigrate_status), and "
                                "--resume with the report collects its outcome"
                            )
                    raise
                self._interrupt(state, waiting)
            self._maybe_write(state)
            now = time.monotonic()
            if now - self.last_reply > WAIT_WARNING and now - warned > WAIT_WARNING:
                warned = now
                queued = sorted(
                    {
                        state.results[i].extra.get("queue")
                        for i in open_
                        if state.results[i].status == NOT_STARTED
                    }
                )
                if queued:
                    state.emit("waiting", queues=queued, seconds=now - self.last_reply)
        self._maybe_write(state, now=float("inf"))

    def _interrupt(self, state, waiting: set[int]) -> None:
        """The first Ctrl-C: no more targets start, and running ones stop before their next migration."""
        state.interrupted.set()
        state.no_more.set()
        state.stopped = "interrupt"
        state.emit("stopping", reason="interrupt", why="Ctrl-C")
        self._revoke(
            [
                state.results[i].extra["task_id"] + INTERRUPT
                for i in waiting
                if state.results[i].extra.get("task_id") and state.results[i].status in (RUNNING, NOT_STARTED)
            ]
        )

    def _revoke_unstarted(self, state, open_: list[int]) -> None:
        ids = []
        for i in open_:
            r = state.results[i]
            task_id = r.extra.get("task_id")
            if r.status == NOT_STARTED and task_id and task_id not in self.revoked:
                ids.append(task_id)
                r.extra["revoked"] = True
                r.reason = {
                    "canary": "revoked before it started: a canary target failed",
                    "error": "revoked before it started: another target failed (--on-error stop)",
                    "interrupt": "revoked before it started: the rollout was interrupted",
                    "broker": "revoked before it started: the broker failed",
                }.get(state.stopped or "", "revoked before it started")
        self._revoke(ids)

    def _revoke(self, ids: list[str]) -> None:
        ids = [i for i in ids if i]
        if not ids:
            return
        self.revoked.update(ids)
        # A broker that is gone hands them to no worker either.
        with contextlib.suppress(OSError, KombuError, CeleryError):
            self.app.control.revoke(ids)

    def _broker_lost(self, state, exc: BaseException) -> None:
        state.stop("broker", f"the connection to the broker at {describe_broker(self.app)} was lost ({exc})")
        for i in self.waiting:
            r = state.results[i]
            if r.status == RUNNING:
                r.status, r.extra["detached"] = INTERRUPTED, True
                r.reason = (
                    f"running on {r.extra.get('worker') or 'a worker'} when the broker connection was lost; "
                    "its tracking table says what ran, and --resume with the report collects its outcome"
                )

    # -- replies ---------------------------------------------------------------------------------

    def _on_reply(self, body: dict, message) -> None:
        self.last_reply = time.monotonic()
        index = self.by_task.get(body.get("task_id") or "")
        if index is None:
            message.ack()  # a reply of another rollout's task can't reach this queue; of a stale task: drop it
            return
        state = self.state
        r = state.results[index]
        seen = self.deliveries.setdefault(index, set())
        if body["event"] == "started":
            seen.add(body["delivery"])
            r.extra["deliveries"] = len(seen)
            r.extra["worker"] = body.get("worker")
            if len(seen) > 1 or body.get("redelivered"):
                r.extra["redelivered"] = True
            if r.status == NOT_STARTED:
                r.status = RUNNING
        elif body["event"] == "finished":
            seen.add(body["delivery"])
            r.extra["deliveries"] = max(len(seen), r.extra.get("deliveries") or 0)
            first = r.status in (NOT_STARTED, RUNNING)
            self._finish(r, body)
            if first:
                state.finished += 1
                canary = state.canary_phase
                if r.status == FAILED and (state.on_error == STOP or canary):
                    state.stop(
                        "canary" if canary else "error",
                        f"canary target {r.target.key} failed" if canary else f"{r.target.key} failed",
                    )
                state.emit(
                    "target_done", result=r, finished=state.finished, total=state.total, rollout=state.rollout
                )
        self.unacked.append(message)

    def _finish(self, r: TargetResult, body: dict) -> None:
        """Record a delivery's outcome; a second delivery's outcome merges with the first (a re-delivered task)."""
        applied = list(dict.fromkeys([*r.applied, *body.get("applied", [])]))
        r.status = body["status"]
        if r.status == UP_TO_DATE and applied:
            r.status = DONE  # the first delivery applied them before its worker was lost
        r.applied = applied
        r.summary, r.line, r.error = body.get("summary", ""), body.get("line", ""), body.get("error")
        r.reason = body.get("reason") or ""
        r.seconds = float(body.get("seconds") or 0.0)
        r.extra["worker"] = body.get("worker")
        r.output = (body.get("stdout") or "", body.get("stderr") or "")
        r.payload = body.get("payload")

    def _maybe_write(self, state, now: float | None = None) -> None:
        """Have the report written (when due), then acknowledge the replies it holds."""
        now = time.monotonic() if now is None else now
        if self.unacked and now >= self.next_write:
            started = time.monotonic()
            state.emit("replies", rollout=state.rollout)
            done = time.monotonic()
            self.next_write = done + max(
                0.5, 4 * (done - started)
            )  # writing takes at most a fifth of the time
            self._ack()

    def _ack(self) -> None:
        for message in self.unacked:
            with contextlib.suppress(OSError, KombuError):
                message.ack()
        self.unacked = []


__all__ = [
    "CONTINUE",
    "STOP",
    "CeleryExecutor",
    "celery_app",
    "check_tree",
    "down",
    "lint",
    "status",
    "up",
    "verify",
]
