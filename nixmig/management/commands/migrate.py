"""Django's ``migrate``, followed by nixmig's SQL migrations when NIXMIG['RUN_WITH_MIGRATE'] is on.

Django's own migrations run first (SQL migrations may reference their tables), then
the pending SQL migrations of the same ``--database``, so a deploy script runs one
command. Off by default, this command is exactly Django's ``migrate``.
"""

import sys

from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate

from nixmig import api, conf, databases
from nixmig.exceptions import NixmigError
from nixmig.management.base import EventRenderer


class Command(DjangoMigrate):
    help = DjangoMigrate.help + " With NIXMIG['RUN_WITH_MIGRATE'], then applies pending SQL migrations."

    def handle(self, *args, **options):
        super().handle(*args, **options)
        if not conf.get("RUN_WITH_MIGRATE") or options["app_label"] or options["prune"]:
            return
        database = options["database"]
        if not databases.is_postgresql(database) or not databases.allows(database):
            return
        try:
            self.sql_migrations(database, options)
        except NixmigError as exc:
            renderer = getattr(self, "renderer", None)
            if renderer is not None:
                renderer.fail_line()
            raise CommandError(f"Django's migrations are applied, but the SQL migrations failed: {exc}") from None

    def sql_migrations(self, database: str, options: dict) -> None:
        verbosity = options["verbosity"]
        if options["plan"] or options["check_unapplied"]:
            entries = api.plan("up", database=database)
            if options["plan"]:
                self.stdout.write("Planned SQL migrations:", self.style.MIGRATE_LABEL)
                self.stdout.write("\n".join(f"  {e.id}" for e in entries) or "  No planned SQL migrations.")
            if options["check_unapplied"] and entries:
                sys.exit(1)
            return
        if options["fake"]:
            if verbosity >= 1:
                self.stdout.write("Skipped SQL migrations: --fake applies to Django's migrations only; "
                                  "use 'sqlmigrate_up --fake' to record SQL migrations without running them.")
            return
        if verbosity >= 1:
            self.stdout.write(self.style.MIGRATE_HEADING("SQL migrations (NIXMIG['RUN_WITH_MIGRATE']):"))
        self.renderer = EventRenderer(self.stdout, self.stderr, self.style, verbosity)
        result = api.migrate_up(database=database, progress=self.renderer)
        if verbosity >= 1:
            if result.done:
                self.stdout.write(f"Applied {len(result.done)} migration(s) in {result.seconds:.2f} s; "
                                  f"skipped {result.skipped} already applied.")
            else:
                self.stdout.write("  No SQL migrations to apply.")
