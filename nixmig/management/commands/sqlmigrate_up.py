from django.core.management.base import CommandError

from nixmig import api, lint
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = "Apply pending SQL migrations in global number order, each in a transaction with its record."
    multi_database = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--to", metavar="ID", help="Stop after this migration (e.g. auth/001_create_users).")
        parser.add_argument("--plan", action="store_true", help="Print what would run, in order; change nothing.")
        parser.add_argument("--sql", action="store_true",
                            help="Print the exact SQL that would run, transaction wrapper included; run nothing.")
        parser.add_argument("--fake", action="store_true",
                            help="Record the migrations as applied without running them (baseline a database).")
        parser.add_argument("--atomic", action="store_true",
                            help="Apply the whole batch in one transaction: all or nothing.")
        parser.add_argument("--allow-changed", action="store_true",
                            help="Run even if applied files were edited since they were applied.")
        parser.add_argument("--allow-out-of-order", action="store_true",
                            help="Apply pending migrations that sort before the latest applied one.")
        parser.add_argument("--no-lint", action="store_true",
                            help="Don't lint the plan first (sqlmigrate_lint); by default lint errors refuse the run.")
        parser.add_argument("--lock-wait", type=float, metavar="SECONDS",
                            help="How long to wait for another runner's lock (default: NIXMIG['LOCK_WAIT'], 300).")

    def run(self, *, plan, sql, **options):
        if plan and sql:
            raise CommandError("--plan and --sql can't be combined: --plan lists ids, --sql prints the SQL.")
        if options["parallel"] < 1:
            raise CommandError("--parallel must be 1 or more.")
        job = self.show_plan if plan else self.show_sql if sql else self.apply
        rest = {k: v for k, v in options.items() if k != "database"}
        self.for_each_database(options, lambda alias, writer: job(alias, writer, **rest))

    def apply(self, database, writer, *, directory, to, fake, atomic, allow_changed, allow_out_of_order, lock_wait,
              no_lint=False, **options):
        if no_lint and self.verbosity >= 1:
            writer.stdout.write("Lint skipped (--no-lint): the plan was not checked for locking or breaking statements.")
        with lint.skipped(no_lint):
            result = api.migrate_up(directory=directory, database=database, to=to, fake=fake, atomic=atomic,
                                    allow_changed=allow_changed, allow_out_of_order=allow_out_of_order,
                                    lock_wait=lock_wait, progress=writer)
        if result.done:
            verb = "Faked" if fake else "Applied"
            summary = (f"{verb} {len(result.done)} migration(s) in {result.seconds:.2f} s; "
                       f"skipped {result.skipped} already applied.")
        else:
            summary = "No migrations to apply."
        if self.verbosity >= 1:
            writer.stdout.write(summary)
        return summary

    def show_plan(self, database, writer, *, directory, to, allow_changed, allow_out_of_order, **options):
        entries = api.plan("up", directory=directory, database=database, to=to, allow_changed=allow_changed,
                           allow_out_of_order=allow_out_of_order)
        self.render_plan(entries, "apply", writer)
        return f"{len(entries)} migration(s) to apply"

    def show_sql(self, database, writer, *, directory, to, fake, atomic, allow_changed, allow_out_of_order,
                 **options):
        items = api.preview("up", directory=directory, database=database, to=to, fake=fake, atomic=atomic,
                            allow_changed=allow_changed, allow_out_of_order=allow_out_of_order)
        self.write_sql(items, writer, "No migrations to apply.")
        return f"{sum(1 for entry, _ in items if entry is not None)} migration(s) to apply"

    def render_plan(self, entries, verb, writer=None):
        out = (writer or self.renderer).stdout
        if not entries:
            out.write(f"No migrations to {verb}.")
            return
        out.write(self.style.MIGRATE_HEADING(f"Planned: {verb} {len(entries)} migration(s), in order:"))
        for e in entries:
            out.write(f"  {e.id}")
