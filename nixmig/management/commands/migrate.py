"""Django's ``migrate``, followed by nixmig's SQL migrations when NIXMIG['RUN_WITH_MIGRATE'] is on.

Django's own migrations run first (SQL migrations may reference their tables), then
the pending SQL migrations of the same ``--database``, so a deploy script runs one
command. Off by default, this command is exactly Django's ``migrate``.
"""

import sys

from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate

from nixmig import api, conf, databases, testing
from nixmig.exceptions import MigrationFailed, NixmigError
from nixmig.management.base import EventRenderer


class TestDatabaseRenderer(EventRenderer):
    """SQL migration lines at migrate's verbosity; template lines (stderr) at the test runner's."""

    def __init__(self, stdout, stderr, style, verbosity: int, test_verbosity: int):
        super().__init__(stdout, stderr, style, verbosity)
        self.test_verbosity = test_verbosity

    def __call__(self, event: str, **data) -> None:
        if not event.startswith("template_") and event != "rebuild":
            return super().__call__(event, **data)
        if event == "template_wait":
            self.stderr.write("  Waiting for another test run that is building the SQL-schema template...")
            return
        if self.test_verbosity < 1:
            return
        lines = {
            "template_build": "  Building the SQL-schema template {template} ({migrations} SQL migration(s))...",
            "template_built": "  Built {template}; later test databases are copies of it.",
            "template_cloned": "  Copied the SQL-schema template {template}.",
            "template_spare": "  Took a ready copy of the SQL-schema template {template}.",
            "template_dropped": "  Dropped the stale template {template}.",
            "template_changed": "  The template {template} was changed after it was built; building it again...",
            "rebuild": "  An applied SQL migration was edited (NIXMIG['TEST_REBUILD_CHANGED']): "
            "re-creating {database}...",
        }
        self.stderr.write(lines[event].format(**data))


class Command(DjangoMigrate):
    help = DjangoMigrate.help + " With NIXMIG['RUN_WITH_MIGRATE'], then applies pending SQL migrations."

    def handle(self, *args, **options):
        creating = testing.test_database_creation() if options.get("run_syncdb") else None
        if creating is not None:  # Django's create_test_db: see nixmig.testing
            return self.test_database(creating, *args, **options)
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
            raise CommandError(
                f"Django's migrations are applied, but the SQL migrations failed: {exc}"
            ) from None

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
                self.stdout.write(
                    "Skipped SQL migrations: --fake applies to Django's migrations only; "
                    "use 'sqlmigrate_up --fake' to record SQL migrations without running them."
                )
            return
        if verbosity >= 1:
            self.stdout.write(self.style.MIGRATE_HEADING("SQL migrations (NIXMIG['RUN_WITH_MIGRATE']):"))
        self.renderer = EventRenderer(self.stdout, self.stderr, self.style, verbosity)
        result = api.migrate_up(database=database, progress=self.renderer)
        if verbosity >= 1:
            if result.done:
                self.stdout.write(
                    f"Applied {len(result.done)} migration(s) in {result.seconds:.2f} s; "
                    f"skipped {result.skipped} already applied."
                )
            else:
                self.stdout.write("  No SQL migrations to apply.")

    def test_database(self, creating: dict, *args, **options) -> None:
        """Give the test database Django is creating the SQL schema too (NIXMIG['TEST_APPLY'])."""
        database = options["database"]
        renderer = TestDatabaseRenderer(
            self.stdout, self.stderr, self.style, options["verbosity"], creating["verbosity"]
        )
        try:
            testing.prepare_test_database(
                database, lambda: super(Command, self).handle(*args, **options), progress=renderer
            )
        except NixmigError as exc:
            renderer.fail_line()
            name = self.connection_name(database)
            hint = getattr(exc, "test_hint", None)
            # A failed migration's own advice is for a deploy ("run sqlmigrate_up again"); with a hint for
            # this test run, say only what failed, then the hint.
            detail = exc.failed if hint and isinstance(exc, MigrationFailed) and exc.failed else str(exc)
            raise testing.TestDatabaseError(
                f"The SQL migrations could not be applied to the test database {name!r} (alias {database!r}); "
                f"no test ran. {detail}" + (f" {hint}" if hint else "")
            ) from None

    @staticmethod
    def connection_name(database: str) -> str:
        from django.db import connections

        return connections[database].settings_dict["NAME"]
