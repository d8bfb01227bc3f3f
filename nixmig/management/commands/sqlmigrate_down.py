from django.core.management.base import CommandError

from nixmig import api
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = "Roll back the most recently applied SQL migrations (by application order)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--steps", type=int, default=None, metavar="N", help="Roll back N migrations (default 1).")
        group.add_argument("--to", metavar="ID", help="Roll back everything applied after ID; keep ID.")
        group.add_argument("--all", action="store_true", dest="everything", help="Roll back every migration.")
        parser.add_argument("--plan", action="store_true", help="Print what would be rolled back; change nothing.")
        parser.add_argument("--sql", action="store_true",
                            help="Print the exact SQL that would run, transaction wrapper included; run nothing.")
        parser.add_argument("--fake", action="store_true", help="Remove the records only; run no SQL.")
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive",
                            help="Don't ask for confirmation of --all.")
        parser.add_argument("--lock-wait", type=float, metavar="SECONDS",
                            help="How long to wait for another runner's lock (default 300).")

    def run(self, *, directory, database, steps, to, everything, plan, sql, fake, interactive, lock_wait,
            **options):
        if steps is not None and steps < 1:
            raise CommandError("--steps must be 1 or more.")
        if plan and sql:
            raise CommandError("--plan and --sql can't be combined: --plan lists ids, --sql prints the SQL.")
        steps = steps if steps is not None else (None if (to or everything) else 1)
        if sql:
            items = api.preview("down", directory=directory, database=database, steps=steps, to=to,
                                everything=everything, fake=fake)
            self.write_sql(items, self.renderer, "No migrations to roll back.")
            return
        if plan:
            entries = api.plan("down", directory=directory, database=database, steps=steps, to=to,
                               everything=everything, fake=fake)
            if not entries:
                self.stdout.write("No migrations to roll back.")
                return
            self.stdout.write(self.style.MIGRATE_HEADING(
                f"Planned: roll back {len(entries)} migration(s), in order:"))
            for e in entries:
                self.stdout.write(f"  {e.id}")
            return
        if everything and interactive:
            what = "forget every applied migration (records only)" if fake else "roll back EVERY applied migration"
            if not self.confirm(f"This will {what} in database {database!r}. Continue?"):
                raise CommandError("Cancelled: --all needs confirmation; pass --noinput to skip it.")
        result = api.migrate_down(directory=directory, database=database, steps=steps, to=to,
                                  everything=everything, fake=fake, lock_wait=lock_wait, progress=self.progress)
        if self.verbosity >= 1:
            if result.done:
                verb = "Forgot" if fake else "Rolled back"
                self.stdout.write(f"{verb} {len(result.done)} migration(s), {result.skipped} stay applied, "
                                  f"in {result.seconds:.2f} s.")
            else:
                self.stdout.write("No migrations to roll back.")
