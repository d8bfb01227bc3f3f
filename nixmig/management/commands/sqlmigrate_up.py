from nixmig import api
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = "Apply pending SQL migrations in global number order, each in a transaction with its record."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--to", metavar="ID", help="Stop after this migration (e.g. auth/001_create_users).")
        parser.add_argument("--plan", action="store_true", help="Print what would run, in order; change nothing.")
        parser.add_argument("--fake", action="store_true",
                            help="Record the migrations as applied without running them (baseline a database).")
        parser.add_argument("--atomic", action="store_true",
                            help="Apply the whole batch in one transaction: all or nothing.")
        parser.add_argument("--allow-changed", action="store_true",
                            help="Run even if applied files were edited since they were applied.")
        parser.add_argument("--allow-out-of-order", action="store_true",
                            help="Apply pending migrations that sort before the latest applied one.")
        parser.add_argument("--lock-wait", type=float, metavar="SECONDS",
                            help="How long to wait for another runner's lock (default: NIXMIG['LOCK_WAIT'], 300).")

    def run(self, *, directory, database, to, plan, fake, atomic, allow_changed, allow_out_of_order, lock_wait,
            **options):
        if plan:
            entries = api.plan("up", directory=directory, database=database, to=to, allow_changed=allow_changed,
                               allow_out_of_order=allow_out_of_order)
            return self.render_plan(entries, "apply")
        result = api.migrate_up(directory=directory, database=database, to=to, fake=fake, atomic=atomic,
                                allow_changed=allow_changed, allow_out_of_order=allow_out_of_order,
                                lock_wait=lock_wait, progress=self.progress)
        if self.verbosity >= 1:
            if result.done:
                verb = "Faked" if fake else "Applied"
                self.stdout.write(f"{verb} {len(result.done)} migration(s) in {result.seconds:.2f} s.")
            else:
                self.stdout.write("No migrations to apply.")

    def render_plan(self, entries, verb):
        if not entries:
            self.stdout.write(f"No migrations to {verb}.")
            return
        self.stdout.write(self.style.MIGRATE_HEADING(f"Planned: {verb} {len(entries)} migration(s), in order:"))
        for e in entries:
            self.stdout.write(f"  {e.id}")
