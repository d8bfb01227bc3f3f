"""What every sqlmigrate_* command shares: --dir, --database, error handling, progress output."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from ..exceptions import NixmigError


class NixmigCommand(BaseCommand):
    requires_system_checks = []  # a deploy script must not fail on unrelated checks

    def add_arguments(self, parser):
        parser.add_argument("--dir", dest="directory", metavar="PATH",
                            help="Migrations directory (default: NIXMIG['MIGRATIONS_DIR'] or BASE_DIR/migrations_sql).")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="Database alias to use (default: 'default').")

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except NixmigError as exc:
            if getattr(self, "_open_line", False):
                self.stdout.write(self.style.ERROR(" FAILED"))
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("Interrupted. A migration that was running was rolled back by PostgreSQL "
                               "(no-transaction files keep their finished statements and resume).") from None

    # -- progress rendering ------------------------------------------------------------

    def progress(self, event: str, **data) -> None:
        """Render one engine event, Django-migrate style."""
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
            self._open_line = True
        elif event == "success" and v >= 1:
            fake = " FAKED" if data["fake"] else " OK"
            timing = f" ({data['ms']:.0f} ms)"
            out.write(self.style.SUCCESS(fake) + timing)
            self._open_line = False
        elif event == "sql" and v >= 3:
            self._close_line()
            out.write(data["sql"].rstrip())
        elif event == "statement" and v >= 2:
            self._close_line()
            out.write(f"    statement {data['index']}/{data['total']} (line {data['line']})")
        elif event == "resume" and v >= 1:
            self._close_line()
            out.write(f"    resuming at statement {data['statement']} of {data['total']}")
        elif event == "retry":
            self._close_line()
            self.stderr.write(self.style.WARNING(
                f"    {data['reason']}; retry {data['attempt']}/{data['retries']} in {data['delay']} s"))

    def _close_line(self) -> None:
        if getattr(self, "_open_line", False):
            self.stdout.write("")
            self._open_line = False

    def handle(self, *args, **options):
        self.verbosity = options["verbosity"]
        self._open_line = False
        return self.run(**options)

    def run(self, **options):  # pragma: no cover - overridden
        raise NotImplementedError

    def confirm(self, question: str) -> bool:
        if not sys.stdin.isatty():
            return False
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
