"""What every sqlmigrate_* command shares: --dir, the target options, error handling, progress output."""

from __future__ import annotations

import gc
import io
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.db import DEFAULT_DB_ALIAS, DatabaseError

from .. import api, conf
from .. import rollout as rollouts
from .. import targets as target_sources
from ..exceptions import NixmigError
from ..targets import Target

EXECUTORS = ("threads", "celery")


def add_target_arguments(parser, *, rollout: bool = True) -> None:
    """Add the options that choose targets (databases, URLs, schemas), then, in a section of their own, how a
    rollout over several targets runs (so they don't crowd the options of a single run in --help)."""
    group = parser.add_argument_group("targets (databases, database URLs, schemas)")
    group.add_argument(
        "--database",
        action="append",
        metavar="ALIAS",
        help="Database alias to use (default: 'default'); repeat it for several databases.",
    )
    group.add_argument(
        "--all-databases",
        action="store_true",
        help="Every PostgreSQL database in settings.DATABASES that the routers allow nixmig to migrate.",
    )
    group.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        metavar="NAME",
        help="Work on this schema of each database (schema per tenant); repeatable.",
    )
    group.add_argument(
        "--schemas-from",
        dest="schemas_query",
        metavar="SQL",
        help="A query run on each database that returns schema names, e.g. "
        '"SELECT schema_name FROM tenants".',
    )
    group.add_argument(
        "--targets-file",
        metavar="FILE",
        help="One target per line: alias, alias:schema, URL or 'URL schema', optionally followed "
        "by [canary].",
    )
    group = parser.add_argument_group("rollout over several targets")
    group.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="Work on N targets at once, with at most N connections per server (default 1).",
    )
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="Where the targets run: threads of this process (default, --parallel of them) or celery "
        "(nixmig.tasks on the project's Celery workers, each target on its [queue=NAME]); default: "
        "NIXMIG['ROLLOUT']['EXECUTOR'].",
    )
    if rollout:
        group.add_argument(
            "--canary",
            type=int,
            default=0,
            metavar="K",
            help="Run K targets first (those marked [canary] in the targets file, else the first "
            "K) and stop if any of them fails.",
        )
        group.add_argument(
            "--on-error",
            choices=[rollouts.STOP, rollouts.CONTINUE],
            default=rollouts.STOP,
            help="After a target fails: start no more targets (stop, the default; running ones "
            "finish) or go on with the others (continue).",
        )
        group.add_argument(
            "--report",
            metavar="FILE",
            help="Write a JSON report: per target its status, applied ids, error and duration.",
        )
        group.add_argument(
            "--only-failed",
            metavar="REPORT",
            help="Run only the targets that failed, were interrupted or did not start in this "
            "report (of --report).",
        )
        group.add_argument(
            "--resume",
            metavar="REPORT",
            help="Re-attach to a Celery rollout whose coordinator stopped: collect the outcomes of its "
            "tasks and dispatch the targets it had not dispatched (the report of --report, updated).",
        )


class EventRenderer:
    """Turn engine events into Django-migrate style lines on one pair of output streams."""

    def __init__(self, stdout: OutputWrapper, stderr: OutputWrapper, style, verbosity: int = 1):
        self.stdout = stdout
        self.stderr = stderr
        self.style = style
        self.verbosity = verbosity
        self.open_line = False
        self.label = ""  # "  [2/3] Applying auth/002_x...": repeated before OK when other lines came between

    def __call__(self, event: str, **data) -> None:
        """Render one engine event."""
        v = self.verbosity
        out = self.stdout
        if event == "warning" and v >= 1:
            self.stderr.write(self.style.WARNING(f"Warning: {data['message']}"))
        elif event == "lock_wait":
            holder = data["holder"]
            self.stderr.write(
                f"Waiting for the migration lock, held by pid {holder['pid']} "
                f"({holder.get('application_name') or 'no application_name'}); giving up after "
                f"{data['limit']:.0f} s (--lock-wait)..."
            )
        elif event == "lock_acquired" and v >= 1:
            self.stderr.write(f"Got the migration lock after {data['waited']:.1f} s.")
        elif event == "plan" and v >= 1:
            n = len(data["entries"])
            if n:
                verb = "Apply" if data["direction"] == "up" else "Roll back"
                fake = " (fake: records only, no SQL)" if data["fake"] else ""
                out.write(self.style.MIGRATE_HEADING("Operations to perform:"))
                out.write(f"  {verb} {n} SQL migration(s){fake}")
                out.write(self.style.MIGRATE_HEADING("Running migrations:"))
        elif event == "start" and v >= 1:
            verb = "Applying" if data["direction"] == "up" else "Unapplying"
            counter = f"[{data['index']}/{data['total']}] " if data["total"] > 1 else ""
            self.label = f"  {counter}{verb} {data['entry'].id}..."
            out.write(self.label, ending="")
            out.flush()
            self.open_line = True
        elif event == "success" and v >= 1:
            fake = " FAKED" if data["fake"] else " OK"
            timing = f" ({data['ms']:.0f} ms)"
            out.write(("" if self.open_line else self.label) + self.style.SUCCESS(fake) + timing)
            self.open_line = False
        elif event == "sql" and v >= 3:
            self.close_line()
            out.write(data["sql"].rstrip())
        elif event == "statement" and v >= 2:
            self.close_line()
            out.write(f"    statement {data['index']}/{data['total']} (line {data['line']})")
        elif event == "resume" and v >= 1:
            resuming = f"resuming at statement {data['statement']} of {data['total']}"
            if (
                self.open_line
            ):  # on the migration's line: '  Applying x... resuming at statement 3 of 4... OK'
                out.write(f" {resuming}...", ending="")
                out.flush()
                self.label += f" {resuming}..."
            else:
                out.write(f"    {resuming}")
        elif event == "already_done":
            self.close_line()
            self.stderr.write(
                self.style.WARNING(
                    f"    statement {data['statement']} (line {data['line']}), a {data['what']} that was running when "
                    "the last runner stopped, had finished, so it is not run again"
                )
            )
        elif event == "completed":
            self.close_line()
            self.stderr.write(
                self.style.WARNING(
                    f"    statement {data['statement']} (line {data['line']}), a {data['what']}, failed "
                    f"({data['reason']}), but finishing what it left completed it, so it counts as done"
                )
            )
        elif event == "cleaned":
            self.close_line()
            self.stderr.write(
                self.style.WARNING(
                    f"    statement {data['statement']} (line {data['line']}): "
                    f"{'finished' if data.get('finishes') else 'removed'} {data['what']} that an "
                    f"interrupted or failed attempt left ({data['sql']})"
                )
            )
        elif event == "lint" and v >= 1:
            self.close_line()
            report = data["report"]
            self.stderr.write(
                self.style.WARNING(
                    f"Lint: {report.summary()}, none blocking; 'python manage.py sqlmigrate_lint' shows them."
                )
            )
        elif event == "retry":
            self.close_line()
            self.stderr.write(
                self.style.WARNING(
                    f"    {data['reason']}; retry {data['attempt']}/{data['retries']} in {data['delay']} s"
                )
            )

    def close_line(self) -> None:
        if self.open_line:
            self.stdout.write("")
            self.open_line = False

    def fail_line(self) -> None:
        """End a started 'Applying ...' line with FAILED."""
        if self.open_line:
            self.stdout.write(self.style.ERROR(" FAILED"))
            self.open_line = False


class NixmigCommand(BaseCommand):
    requires_system_checks = []  # a deploy script must not fail on unrelated checks
    multi_database = False  # True: the target options (add_target_arguments) and rollouts over many targets
    rollout_options = True  # with multi_database: also --canary, --on-error, --report, --only-failed
    compact = False  # set during a rollout of tenants: one line per target, no blocks
    # Inside a Celery task (nixmig.tasks): (target, progress callback, tree digest), and the job's outcome.
    worker: tuple[Target, Callable, str] | None = None
    worker_outcome: rollouts.Outcome | None = None
    uses_database = True  # False: the command reads and writes files only (no --database)

    def add_arguments(self, parser):
        parser.add_argument(
            "--dir",
            dest="directory",
            metavar="PATH",
            help="Migrations directory (default: NIXMIG['MIGRATIONS_DIR'] or BASE_DIR/migrations_sql).",
        )
        if self.multi_database:
            add_target_arguments(parser, rollout=self.rollout_options)
        elif self.uses_database:
            parser.add_argument(
                "--database", default=DEFAULT_DB_ALIAS, help="Database alias to use (default: 'default')."
            )

    def run_from_argv(self, argv):
        # From the command line (not call_command): what Django's start-up made lives as long as the
        # process, so the garbage collector stops walking it. Its full passes over that heap, set off by
        # the tens of thousands of objects a 10,000-migration status makes, were a third of resolving.
        gc.freeze()
        return super().run_from_argv(argv)

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except NixmigError as exc:
            renderer = getattr(self, "renderer", None)
            if renderer is not None:
                renderer.fail_line()
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:  # a safety net: the API turns these into NixmigErrors already
            renderer = getattr(self, "renderer", None)
            if renderer is not None:
                renderer.fail_line()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CommandError(
                f"The database failed: {first}. The tracking table says exactly what ran "
                "(sqlmigrate_status shows it); run the command again once the database "
                "answers."
            ) from None
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted. A transactional migration that was running was rolled back with its "
                "record; a no-transaction file keeps the statements that finished as progress "
                "(sqlmigrate_status shows it partly applied or partly rolled back)."
            ) from None

    # -- progress rendering ------------------------------------------------------------

    def progress(self, event: str, **data) -> None:
        """Render one engine event, Django-migrate style."""
        self.renderer(event, **data)

    def handle(self, *args, **options):
        self.verbosity = options["verbosity"]
        self.renderer = EventRenderer(self.stdout, self.stderr, self.style, self.verbosity)
        return self.run(**options)

    def run(self, *args: Any, **options: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def confirm(self, question: str) -> bool:
        if not sys.stdin.isatty():
            return False
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    # -- several targets ---------------------------------------------------------------

    def select_targets(self, options: dict) -> target_sources.Selection:
        """Return the targets the options name; with --only-failed, those of the report to run again."""
        sources: dict[str, Any] = dict(  # select()'s keyword arguments
            database=options.get("database"),
            all_databases=bool(options.get("all_databases")),
            schemas=options.get("schemas") or (),
            schemas_query=options.get("schemas_query"),
            targets_file=options.get("targets_file"),
        )
        only_failed = options.get("only_failed")
        if not only_failed:
            return target_sources.select(**sources)
        keys, recorded = rollouts.rerun_targets(only_failed)
        given = any(sources.values())
        if not given:
            if recorded is None:  # a report of an older nixmig: aliases only (a URL key has no password)
                return self._with_queues(target_sources.from_keys(keys, only_failed), only_failed)
            sources = {k: recorded.get(k) for k in sources}
            sources["schemas"] = sources["schemas"] or ()
            sources["all_databases"] = bool(sources["all_databases"])
        selection = target_sources.select(**sources, use_setting=not given)
        found = {t.key for t in selection.targets}
        wanted = set(keys)
        selection.targets = [t for t in selection.targets if t.key in wanted]
        selection.skipped = [
            (key, f"it failed in {only_failed}, but the target options no longer select it")
            for key in keys
            if key not in found
        ]
        return self._with_queues(selection, only_failed)

    @staticmethod
    def _with_queues(selection: target_sources.Selection, report: str) -> target_sources.Selection:
        """Give the targets of a Celery rollout's report the queue they had there, unless they name one."""
        queues = rollouts.rerun_queues(report)
        selection.targets = [replace(t, queue=t.queue or queues.get(t.key)) for t in selection.targets]
        return selection

    @staticmethod
    def target_options(options: dict) -> dict:
        """Return the target options of this run, as a report keeps them for --only-failed."""
        return {
            "database": options.get("database"),
            "all_databases": bool(options.get("all_databases")),
            "schemas": list(options.get("schemas") or ()),
            "schemas_query": options.get("schemas_query"),
            "targets_file": str(Path(options["targets_file"]).resolve())
            if options.get("targets_file")
            else None,
        }

    def for_each_target(
        self,
        options: dict,
        job: Callable[[Target, EventRenderer, Callable], rollouts.Outcome],
        *,
        done_label: str = "done",
        on_error: str | None = None,
        finish: Callable[[rollouts.Rollout], None] | None = None,
    ) -> rollouts.Rollout | None:
        """Run ``job(target, writer, progress)`` on every selected target and report per target.

        One database and no rollout option (the usual case): the job writes straight to the
        command's output and an error ends the command as before. Otherwise the rollout engine
        runs it: databases get a block of output each (one block per database with --parallel),
        schemas and URLs one line each with a live count; then a summary, the --report, and a
        non-zero exit when any target failed. ``progress`` is the callback to give the API;
        ``finish`` gets the rollout before a failure ends the command.
        """
        worker = getattr(self, "worker", None)
        if worker is not None:  # inside a Celery task (nixmig.tasks): this one target, here
            target, progress, digest = worker
            from ..tasks import check_tree

            check_tree(
                digest,
                getattr(self, "tree", None) or api.load_tree(options.get("directory")),
                self.hostname(),
            )
            self.worker_outcome = job(target, self.renderer, progress)
            return None
        parallel = options.get("parallel") or 1
        if parallel < 1:
            raise CommandError("--parallel must be 1 or more.")
        if (options.get("canary") or 0) < 0:
            raise CommandError("--canary must be 0 or more.")
        executor_name = options.get("executor") or conf.rollout("EXECUTOR")
        if executor_name not in EXECUTORS:
            raise CommandError(
                f"NIXMIG['ROLLOUT']['EXECUTOR'] = {executor_name!r} is not an executor; use 'threads' or 'celery'."
            )
        if options.get("resume"):
            return self._resume(options, job, done_label, on_error, finish)
        selection = self.select_targets(options)
        try:
            executor = (
                self.celery_executor(options) if executor_name == "celery" and selection.targets else None
            )
            return self._rollout(
                selection,
                options,
                job,
                parallel,
                done_label,
                on_error or options.get("on_error") or rollouts.STOP,
                finish,
                executor,
            )
        finally:
            selection.close()

    def hostname(self) -> str:
        import socket

        return socket.gethostname()

    def celery_executor(self, options: dict, **resumed):
        """Return the Celery executor of this command and its options, connected to the broker."""
        try:
            from .. import tasks
        except ImportError as exc:
            raise CommandError(
                f"--executor celery needs Celery ({exc}); install it with pip install 'nixmig[celery]'."
            ) from None
        from ..tree import digest

        command = type(self).__module__.rsplit(".", 1)[-1]
        tree = getattr(self, "tree", None) or api.load_tree(options.get("directory"))
        tree.raise_for_errors()
        if options.get("directory") is None and getattr(self, "tree", None) is not None:
            options = dict(options, directory=str(tree.directory))  # the tree the digest is of
        executor = tasks.CeleryExecutor(
            tasks.celery_app(), command, options, resumed.pop("digest", None) or digest(tree), **resumed
        )
        executor.connect()  # a broker that is down: one paragraph, before anything is dispatched
        return executor

    def _resume(self, options, job, done_label, on_error, finish) -> rollouts.Rollout | None:
        """Re-attach to the Celery rollout of a report: collect its tasks' outcomes, dispatch what it had not."""
        path = options["resume"]
        data = rollouts.read_report(path, "--resume")
        meta = data.get("celery")
        if data.get("executor") != "celery" or not isinstance(meta, dict):
            raise CommandError(
                f"{path} is the report of a rollout on threads, which ended with its process; --resume re-attaches "
                f"to Celery rollouts only. Run the failed and unfinished targets again with --only-failed {path}."
            )
        command = type(self).__module__.rsplit(".", 1)[-1]
        from ..tasks import TASKS

        if meta.get("task") != TASKS.get(command):
            raise CommandError(
                f"{path} is the report of a {meta.get('task')} rollout; resume it with that command."
            )
        self.resumed_sources = data.get("sources")  # what --only-failed on the updated report selects with
        # The coordinator connects to no target, so the report's keys are all it needs (no credentials).
        selection = target_sources.Selection([], [], [])
        try:
            results = []
            for row in data["targets"]:
                target = Target(
                    row.get("database") or "",
                    row.get("schema"),
                    row.get("url"),
                    bool(row.get("canary")),
                    row.get("queue"),
                )
                if target.key != row["target"]:
                    raise CommandError(
                        f"{path} is not a report of this nixmig: {row['target']!r} can't be read back."
                    )
                extra = {
                    k: row[k]
                    for k in ("task_id", "queue", "worker", "deliveries", "revoked", "redelivered")
                    if k in row
                }
                results.append(
                    rollouts.TargetResult(
                        target,
                        row["status"],
                        list(row.get("applied") or []),
                        row.get("summary") or "",
                        error=row.get("error"),
                        seconds=float(row.get("seconds") or 0),
                        reason=row.get("reason") or "",
                        extra=extra,
                    )
                )
            selection.targets = [r.target for r in results]
            options = dict(options, **meta.get("options", {}), report=options.get("report") or path)
            executor = self.celery_executor(
                options,
                digest=meta.get("digest"),
                rollout_id=meta.get("rollout"),
                dispatch_new=data.get("stopped") is None,
            )
            rollout = self._rollout(
                selection,
                options,
                job,
                1,
                done_label,
                on_error or options.get("on_error") or rollouts.STOP,
                finish,
                executor,
                results,
                data.get("stopped"),
            )
        finally:
            selection.close()
        return rollout

    def _rollout(
        self,
        selection,
        options,
        job,
        parallel,
        done_label,
        on_error,
        finish,
        executor=None,
        results=None,
        stopped=None,
    ) -> rollouts.Rollout | None:
        found, skipped = selection.targets, selection.skipped
        asked = (
            options.get("report")
            or options.get("only_failed")
            or options.get("canary")
            or executor is not None
        )
        if options.get("only_failed") and not found:
            if self.verbosity >= 1:
                self.stdout.write(
                    f"Nothing to run again: no target of {options['only_failed']} failed, was "
                    "interrupted or was left not started."
                )
            return None
        if len(found) + len(skipped) == 1 and not asked and not options.get("all_databases"):
            if skipped:
                alias, reason = skipped[0]
                if self.verbosity >= 1:
                    self.stdout.write(f"Skipped database {alias!r}: {reason}.")
                return None
            job(found[0], self.renderer, self.renderer)
            return None
        compact = any(t.schema or t.url for t in found)  # tenants: one line each; databases: a block each
        self.compact = compact and self.verbosity < 2  # a job may then skip what only its block would show
        show_blocks = not compact or self.verbosity >= 2
        buffered = compact or (parallel > 1 and len(found) > 1)
        writers: dict[str, tuple[EventRenderer, io.StringIO | None, io.StringIO | None]] = {}
        guard = threading.Lock()
        one_alias = len({t.alias for t in found}) == 1 and all(t.schema for t in found)

        def writer_for(target: Target) -> EventRenderer:
            with guard:
                if target.key not in writers:
                    if buffered:
                        out, err = io.StringIO(), io.StringIO()
                        writers[target.key] = (
                            EventRenderer(OutputWrapper(out), OutputWrapper(err), self.style, self.verbosity),
                            out,
                            err,
                        )
                    else:
                        writers[target.key] = (self.renderer, None, None)
                return writers[target.key][0]

        def run_job(target: Target, progress) -> rollouts.Outcome:
            writer = writer_for(target)
            if show_blocks and self.verbosity >= 1:
                writer.stdout.write(
                    self.style.MIGRATE_LABEL(
                        f"Database {target.alias!r}:" if not compact else f"Target {target.key}:"
                    )
                )
            try:
                return job(target, writer, progress)
            except NixmigError as exc:
                writer.fail_line()
                if not compact:
                    writer.stderr.write(self.style.ERROR(f"Database {target.alias!r}: {exc}"))
                raise

        report = options.get("report")
        next_write = [0.0]

        def write_report(rollout: rollouts.Rollout, now: float | None = None) -> None:
            """Write the report as results arrive: a killed coordinator leaves a valid partial report.

            With ``now``, only when due: at most twice a second, and never more than a fifth of the
            time (a report of 100,000 targets takes a while to write).
            """
            if report and (now is None or now >= next_write[0]):
                started = time.monotonic()
                rollouts.write_report(
                    report,
                    rollout,
                    command=type(self).__module__.rsplit(".", 1)[-1],
                    directory=str(options.get("directory") or "") or None,
                    sources=getattr(self, "resumed_sources", None) or self.target_options(options),
                )
                done = time.monotonic()
                next_write[0] = done + max(0.5, 4 * (done - started))

        def on_event(event: str, **data) -> None:
            if event in ("dispatched", "replies"):
                write_report(data["rollout"])
            elif event == "waiting":
                self.stderr.write(
                    self.style.WARNING(
                        f"No worker has answered for {data['seconds']:.0f} s; targets wait in queue(s) "
                        f"{', '.join(data['queues'])}: is a worker running with -Q for each (celery -A <project> "
                        "worker -Q <queue>)?"
                    )
                )
            elif event == "target_done":
                result = data["result"]
                write_report(data["rollout"], time.monotonic())
                with guard:
                    writer, out, err = writers.pop(result.target.key, (None, None, None))
                if out is not None and err is not None and show_blocks:  # both set, or neither
                    self.stdout.write(out.getvalue(), ending="")
                    self.stderr.write(err.getvalue(), ending="")
                elif result.output is not None and show_blocks:  # a block written on a Celery worker
                    self.stdout.write(result.output[0], ending="")
                    self.stderr.write(result.output[1], ending="")
                if compact:
                    if self.verbosity >= 1:
                        label = result.target.schema if one_alias else result.target.key
                        self.stdout.write(self.target_line(result, label, data["finished"], data["total"]))
                    if result.error:
                        self.stderr.write(
                            self.style.ERROR(f"Target {result.target.key}: {result.error['message']}")
                        )
            elif event == "phase" and self.verbosity >= 1:
                self.stdout.write(
                    self.style.MIGRATE_HEADING(
                        f"Canary: {data['count']} target(s) first."
                        if data["name"] == "canary"
                        else f"Canary passed; the other {data['count']} target(s):"
                    )
                )
            elif event == "stopping":
                what = {
                    "interrupt": "Interrupted (Ctrl-C): no more targets start, and running ones stop before "
                    "their next migration; press Ctrl-C again to stop waiting.",
                    "canary": f"Stopping: {data['why']}; no other target starts.",
                    "error": f"Stopping: {data['why']}; no more targets start (--on-error stop), running "
                    "ones finish.",
                    "broker": f"Stopping: {data['why']}; no more targets are dispatched.",
                }[data["reason"]]
                self.stderr.write(self.style.WARNING(what))

        if executor is not None:
            executor.want_output = show_blocks
        try:
            result = rollouts.run(
                found,
                run_job,
                parallel=parallel,
                canary=options.get("canary") or 0,
                on_error=on_error,
                progress_for=writer_for,
                callback=on_event,
                skipped=skipped,
                executor=executor,
                results=results,
                meta=executor.meta() if executor is not None else None,
            )
        except BaseException:
            if executor is not None:
                executor.close(keep_queue=True)
            raise
        result.stopped = result.stopped or stopped
        if executor is not None:  # keep the reply queue while a task may still answer (for --resume)
            executor.close(keep_queue=bool(self._unfinished(result.results)))
        write_report(result)
        self.render_rollout(result, compact, done_label)
        if finish is not None:
            finish(result)
        self.fail_rollout(result, compact, report)
        return result

    @staticmethod
    def _unfinished(results: list[rollouts.TargetResult]) -> list[rollouts.TargetResult]:
        """Return the results whose Celery task may still send a reply (running, detached, or queued)."""
        return [
            r
            for r in results
            if r.extra.get("task_id")
            and (
                r.status == rollouts.RUNNING
                or r.extra.get("detached")
                or (r.status == rollouts.NOT_STARTED and not r.extra.get("revoked"))
            )
        ]

    def target_line(self, result: rollouts.TargetResult, label: str, finished: int, total: int) -> str:
        """Return the line of one finished target: '[312/1000] tenant_0312 ... 14 applied in 0.4 s'."""
        head = f"[{finished}/{total}] {label} ... "
        if result.status == rollouts.FAILED:
            err = result.error or {}
            where = f" at {err['migration']}" if err.get("migration") else ""
            why = f" (SQLSTATE {err['sqlstate']})" if err.get("sqlstate") else ""
            return head + self.style.ERROR(f"FAILED{where}{why}") + f" in {result.seconds:.1f} s"
        if result.status == rollouts.INTERRUPTED:
            return head + self.style.WARNING(f"interrupted after {len(result.applied)} migration(s)")
        return head + (result.line or result.summary or result.status.replace("_", " "))

    def render_rollout(self, result: rollouts.Rollout, compact: bool, done_label: str = "done") -> None:
        if self.verbosity < 1:
            return
        self.stdout.write(
            self.style.MIGRATE_HEADING("Summary:") + ("" if not compact else " " + result.summary(done_label))
        )
        if compact:
            for r in result.with_status(rollouts.SKIPPED):
                self.stdout.write(f"  {r.target.key}: skipped, {r.reason}")
            return
        for r in result.results:
            if r.status == rollouts.FAILED:
                self.stdout.write(f"  {r.target.key}: " + self.style.ERROR("FAILED"))
            elif r.status == rollouts.INTERRUPTED:
                self.stdout.write(f"  {r.target.key}: " + self.style.WARNING("interrupted"))
            elif r.status in (rollouts.NOT_STARTED, rollouts.SKIPPED):
                word = "skipped" if r.status == rollouts.SKIPPED else "not started"
                self.stdout.write(f"  {r.target.key}: {word}, {r.reason}")
            else:
                self.stdout.write(f"  {r.target.key}: {r.summary or 'done'}")

    def fail_rollout(self, result: rollouts.Rollout, compact: bool, report: str | None) -> None:
        """Raise a CommandError when a target failed, a canary stopped the rollout, or it was interrupted."""
        failed = result.with_status(rollouts.FAILED, rollouts.INTERRUPTED)
        waiting = result.with_status(rollouts.NOT_STARTED)
        again = (
            f" Run again with --only-failed {report} to run only the failed, interrupted and not started "
            "ones."
            if report
            else ""
        )
        if result.stopped == "broker":
            raise CommandError(
                f"The Celery broker failed during the rollout: {result.summary().rstrip('.')}. Targets that were "
                "running finish on their workers and their tracking tables say what ran. Once the broker answers, "
                + (
                    f"run again with --resume {report} to collect their outcomes and dispatch the rest."
                    if report
                    else "run the command again."
                )
            )
        if result.stopped == "interrupt":
            raise CommandError(
                f"Interrupted (Ctrl-C): {result.summary().rstrip('.')}. Each target that was running stopped before "
                "its next migration; the migration in progress was committed with its record or rolled back "
                "with it, so nothing is half-done." + again,
                returncode=130,
            )
        if not failed and result.stopped != "canary":
            return
        noun = "target" if compact else "database"
        names = ", ".join(r.target.key for r in failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        if result.stopped == "canary":
            first = (
                f"A canary failed ({names}); the rollout stopped there: {len(waiting)} {noun}(s) not "
                "started. See"
            )
        else:
            first = f"{len(failed)} of {len(result.results)} {noun}(s) failed: {names}."
            first += (
                " The others are done; see"
                if not waiting
                else f" {len(waiting)} not started (--on-error stop); see"
            )
        raise CommandError(f"{first} each {noun}'s error above, fix it and run again.{again}")

    def write_sql(self, items, writer: EventRenderer, empty: str) -> None:
        """Print preview queries as an SQL script: a comment naming each migration, then its queries."""
        if not items:
            writer.stdout.write(f"-- {empty}")
            return
        for entry, queries in items:
            writer.stdout.write(f"-- {entry.id}" if entry is not None else "-- the tracking table")
            for query in queries:
                writer.stdout.write(query)
