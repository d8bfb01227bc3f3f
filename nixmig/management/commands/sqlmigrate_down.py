from django.core.management.base import CommandError

from nixmig import api
from nixmig.management.base import NixmigCommand
from nixmig.rollout import DONE, UP_TO_DATE, Outcome


class Command(NixmigCommand):
    help = "Roll back the most recently applied SQL migrations (by application order)."
    multi_database = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--steps", type=int, default=None, metavar="N", help="Roll back N migrations (default 1)."
        )
        group.add_argument("--to", metavar="ID", help="Roll back everything applied after ID; keep ID.")
        group.add_argument("--all", action="store_true", dest="everything", help="Roll back every migration.")
        parser.add_argument(
            "--plan", action="store_true", help="Print what would be rolled back; change nothing."
        )
        parser.add_argument(
            "--sql",
            action="store_true",
            help="Print the exact SQL that would run, transaction wrapper included; run nothing.",
        )
        parser.add_argument("--fake", action="store_true", help="Remove the records only; run no SQL.")
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Don't ask for confirmation of --all.",
        )
        parser.add_argument(
            "--lock-wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for another runner's lock (default 300).",
        )

    def run(self, *, directory, steps, to, everything, plan, sql, fake, interactive, lock_wait, **options):
        if steps is not None and steps < 1:
            raise CommandError("--steps must be 1 or more.")
        if plan and sql:
            raise CommandError("--plan and --sql can't be combined: --plan lists ids, --sql prints the SQL.")
        steps = steps if steps is not None else (None if (to or everything) else 1)
        what = dict(steps=steps, to=to, everything=everything, fake=fake)
        self.tree = api.load_tree(directory)
        asked = {"confirmed": not (everything and interactive and not plan and not sql)}

        def job(target, writer, progress):
            if sql:
                items = api.preview(
                    "down", directory=directory, database=target.alias, schema=target.schema, **what
                )
                self.write_sql(items, writer, "No migrations to roll back.")
                text = f"{sum(1 for entry, _ in items if entry is not None)} migration(s) to roll back"
                return Outcome(DONE, [], text, text)
            if plan:
                entries = api.plan(
                    "down", directory=directory, database=target.alias, schema=target.schema, **what
                )
                text = f"{len(entries)} migration(s) to roll back"
                if not entries:
                    writer.stdout.write("No migrations to roll back.")
                else:
                    writer.stdout.write(
                        self.style.MIGRATE_HEADING(
                            f"Planned: roll back {len(entries)} migration(s), in order:"
                        )
                    )
                    for e in entries:
                        writer.stdout.write(f"  {e.id}")
                return Outcome(DONE if entries else UP_TO_DATE, [], text, text)
            result = api.migrate_down(
                directory=directory,
                database=target.alias,
                schema=target.schema,
                lock_wait=lock_wait,
                progress=progress,
                tree=self.tree,
                **what,
            )
            verb = "Forgot" if fake else "Rolled back"
            summary = (
                f"{verb} {len(result.done)} migration(s), {result.skipped} stay applied, "
                f"in {result.seconds:.2f} s."
                if result.done
                else "No migrations to roll back."
            )
            if self.verbosity >= 1:
                writer.stdout.write(summary)
            line = (
                f"{len(result.done)} {verb.lower()} in {result.seconds:.1f} s"
                if result.done
                else "nothing to roll back"
            )
            return Outcome(DONE if result.done else UP_TO_DATE, result.ids, summary, line, result)

        if not asked["confirmed"]:
            selection = self.select_targets(options)
            try:
                where = (
                    f"database {selection.targets[0].key!r}"
                    if len(selection.targets) == 1
                    else f"{len(selection.targets)} targets"
                )
            finally:
                selection.close()
            what_ = (
                "forget every applied migration (records only)"
                if fake
                else "roll back EVERY applied migration"
            )
            if not self.confirm(f"This will {what_} in {where}. Continue?"):
                raise CommandError("Cancelled: --all needs confirmation; pass --noinput to skip it.")
        self.for_each_target(dict(options, directory=directory), job, done_label="rolled back")
