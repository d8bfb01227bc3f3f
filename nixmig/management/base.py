"""What every sqlmigrate_* command shares: --dir, --database, error handling, progress output."""

from __future__ import annotations

import io
import sys
from typing import Callable

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.db import DEFAULT_DB_ALIAS

from .. import databases
from ..exceptions import NixmigError


class EventRenderer:
    """Turn engine events into Django-migrate style lines on one pair of output streams."""

    def __init__(self, stdout: OutputWrapper, stderr: OutputWrapper, style, verbosity: int = 1):
        self.stdout = stdout
        self.stderr = stderr
        self.style = style
        self.verbosity = verbosity
        self.open_line = False

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
                f"{data['limit']:.0f} s (--lock-wait)...")
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
            out.write(f"  {counter}{verb} {data['entry'].id}...", ending="")
            out.flush()
            self.open_line = True
        elif event == "success" and v >= 1:
            fake = " FAKED" if data["fake"] else " OK"
            timing = f" ({data['ms']:.0f} ms)"
            out.write(self.style.SUCCESS(fake) + timing)
            self.open_line = False
        elif event == "sql" and v >= 3:
            self.close_line()
            out.write(data["sql"].rstrip())
        elif event == "statement" and v >= 2:
            self.close_line()
            out.write(f"    statement {data['index']}/{data['total']} (line {data['line']})")
        elif event == "resume" and v >= 1:
            self.close_line()
            out.write(f"    resuming at statement {data['statement']} of {data['total']}")
        elif event == "invalid_index":
            self.close_line()
            self.stderr.write(self.style.WARNING(
                f"    dropped the invalid index {data['index']} that an interrupted CREATE INDEX CONCURRENTLY "
                f"(line {data['line']}) left behind; building it again"))
        elif event == "lint" and v >= 1:
            self.close_line()
            report = data["report"]
            self.stderr.write(self.style.WARNING(
                f"Lint: {report.summary()}, none blocking; 'python manage.py sqlmigrate_lint' shows them."))
        elif event == "retry":
            self.close_line()
            self.stderr.write(self.style.WARNING(
                f"    {data['reason']}; retry {data['attempt']}/{data['retries']} in {data['delay']} s"))

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
    multi_database = False  # True: --database repeatable, --all-databases, --parallel

    def add_arguments(self, parser):
        parser.add_argument("--dir", dest="directory", metavar="PATH",
                            help="Migrations directory (default: NIXMIG['MIGRATIONS_DIR'] or BASE_DIR/migrations_sql).")
        if self.multi_database:
            parser.add_argument("--database", action="append", metavar="ALIAS",
                                help="Database alias to use (default: 'default'); repeat it for several databases.")
            parser.add_argument("--all-databases", action="store_true",
                                help="Every PostgreSQL database in settings.DATABASES that the routers allow "
                                     "nixmig to migrate.")
            parser.add_argument("--parallel", type=int, default=1, metavar="N",
                                help="With several databases, work on N of them at once (default 1).")
        else:
            parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                                help="Database alias to use (default: 'default').")

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except NixmigError as exc:
            renderer = getattr(self, "renderer", None)
            if renderer is not None:
                renderer.fail_line()
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("Interrupted. A migration that was running was rolled back by PostgreSQL "
                               "(no-transaction files keep their finished statements and resume).") from None

    # -- progress rendering ------------------------------------------------------------

    def progress(self, event: str, **data) -> None:
        """Render one engine event, Django-migrate style."""
        self.renderer(event, **data)

    def handle(self, *args, **options):
        self.verbosity = options["verbosity"]
        self.renderer = EventRenderer(self.stdout, self.stderr, self.style, self.verbosity)
        return self.run(**options)

    def run(self, **options):  # pragma: no cover - overridden
        raise NotImplementedError

    def confirm(self, question: str) -> bool:
        if not sys.stdin.isatty():
            return False
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    # -- several databases -------------------------------------------------------------

    def for_each_database(self, options: dict, job: Callable[[str, EventRenderer], str | None]) -> None:
        """Run ``job(alias, renderer)`` on every selected database and report per database.

        With one database (the usual case) the job writes straight to the command's
        output and an error ends the command as before. With several (or --all-databases)
        each gets a heading, a failure stops only its own database, a summary follows, and
        the command fails if any database failed. ``job`` returns its summary line.
        """
        all_databases = bool(options.get("all_databases"))
        selection = databases.select(options.get("database"), all_databases=all_databases)
        if not all_databases and len(selection.aliases) + len(selection.skipped) == 1:
            if selection.skipped:
                alias, reason = selection.skipped[0]
                if self.verbosity >= 1:
                    self.stdout.write(f"Skipped database {alias!r}: {reason}.")
                return
            job(selection.aliases[0], self.renderer)
            return
        parallel = max(int(options.get("parallel") or 1), 1)
        buffered = parallel > 1 and len(selection.aliases) > 1
        renderers: dict[str, EventRenderer] = {}
        buffers: dict[str, tuple[io.StringIO, io.StringIO]] = {}

        def renderer_for(alias: str) -> EventRenderer:
            if not buffered:
                return self.renderer
            out, err = io.StringIO(), io.StringIO()
            buffers[alias] = (out, err)
            return EventRenderer(OutputWrapper(out), OutputWrapper(err), self.style, self.verbosity)

        for alias in selection.aliases:
            renderers[alias] = renderer_for(alias)

        def run_one(alias: str) -> str | None:
            renderer = renderers[alias]
            if self.verbosity >= 1:
                renderer.stdout.write(self.style.MIGRATE_LABEL(f"Database {alias!r}:"))
            try:
                return job(alias, renderer)
            except NixmigError as exc:
                renderer.fail_line()
                renderer.stderr.write(self.style.ERROR(f"Database {alias!r}: {exc}"))
                raise

        def flush(outcome: databases.Outcome) -> None:
            if outcome.database in buffers:
                out, err = buffers[outcome.database]
                self.stdout.write(out.getvalue(), ending="")
                self.stderr.write(err.getvalue(), ending="")

        outcomes = databases.run_each(selection.aliases, run_one, parallel=parallel, on_done=flush)
        if self.verbosity >= 1:
            self.stdout.write(self.style.MIGRATE_HEADING("Summary:"))
            for outcome in outcomes:
                if outcome.ok:
                    self.stdout.write(f"  {outcome.database}: {outcome.result or 'done'}")
                else:
                    self.stdout.write(f"  {outcome.database}: " + self.style.ERROR("FAILED"))
            for alias, reason in selection.skipped:
                self.stdout.write(f"  {alias}: skipped, {reason}")
        failed = [o.database for o in outcomes if not o.ok]
        if failed:
            raise CommandError(f"{len(failed)} of {len(outcomes)} database(s) failed: {', '.join(failed)}. "
                               "The others are done; see each database's error above, fix it and run again.")

    def write_sql(self, items, writer: EventRenderer, empty: str) -> None:
        """Print preview queries as an SQL script: a comment naming each migration, then its queries."""
        if not items:
            writer.stdout.write(f"-- {empty}")
            return
        for entry, queries in items:
            writer.stdout.write(f"-- {entry.id}" if entry is not None else "-- the tracking table")
            for query in queries:
                writer.stdout.write(query)
