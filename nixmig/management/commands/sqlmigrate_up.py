from django.core.management.base import CommandError

from nixmig import api, lint
from nixmig.management.base import NixmigCommand
from nixmig.rollout import DONE, UP_TO_DATE, Outcome


class Command(NixmigCommand):
    help = "Apply pending SQL migrations in global number order, each in a transaction with its record."
    multi_database = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--to",
            metavar="ID",
            help="Stop after this migration (its id as sqlmigrate_status shows it: module/NNN_name).",
        )
        parser.add_argument(
            "--plan", action="store_true", help="Print what would run, in order; change nothing."
        )
        parser.add_argument(
            "--sql",
            action="store_true",
            help="Print the exact SQL that would run, transaction wrapper included; run nothing.",
        )
        parser.add_argument(
            "--fake",
            action="store_true",
            help="Record the migrations as applied without running them (baseline a database).",
        )
        parser.add_argument(
            "--atomic", action="store_true", help="Apply the whole batch in one transaction: all or nothing."
        )
        parser.add_argument(
            "--allow-changed",
            action="store_true",
            help="Run even if applied files were edited since they were applied.",
        )
        parser.add_argument(
            "--allow-out-of-order",
            action="store_true",
            help="Apply pending migrations that sort before the latest applied one.",
        )
        parser.add_argument(
            "--no-lint",
            action="store_true",
            help="Don't lint the plan first (sqlmigrate_lint); by default lint errors refuse the run.",
        )
        parser.add_argument(
            "--lock-wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for another runner's lock (default: NIXMIG['LOCK_WAIT'], 300).",
        )
        parser.add_argument(
            "--create-schemas",
            action="store_true",
            help="Create the schema of a schema target when it does not exist (default: refuse).",
        )

    def run(self, *, plan, sql, **options):
        if plan and sql:
            raise CommandError("--plan and --sql can't be combined: --plan lists ids, --sql prints the SQL.")
        job = self.show_plan if plan else self.show_sql if sql else self.apply
        rest = {k: v for k, v in options.items() if k != "database"}
        self.tree = api.load_tree(options["directory"])  # read once, whatever the number of targets
        self.for_each_target(options, lambda target, writer, progress: job(target, writer, progress, **rest))

    def apply(
        self,
        target,
        writer,
        progress,
        *,
        directory,
        to,
        fake,
        atomic,
        allow_changed,
        allow_out_of_order,
        lock_wait,
        no_lint=False,
        create_schemas=False,
        **options,
    ):
        if no_lint and self.verbosity >= 1:
            writer.stdout.write(
                "Lint skipped (--no-lint): the plan was not checked for locking or breaking statements."
            )
        with lint.skipped(no_lint):
            result = api.migrate_up(
                directory=directory,
                database=target.alias,
                to=to,
                fake=fake,
                atomic=atomic,
                allow_changed=allow_changed,
                allow_out_of_order=allow_out_of_order,
                lock_wait=lock_wait,
                progress=progress,
                tree=self.tree,
                schema=target.schema,
                create_schema=create_schemas,
            )
        verb = "Faked" if fake else "Applied"
        if result.done:
            summary = (
                f"{verb} {len(result.done)} migration(s) in {result.seconds:.2f} s; "
                f"skipped {result.skipped} already applied."
            )
        else:
            summary = "No migrations to apply."
        if self.verbosity >= 1:
            writer.stdout.write(summary)
        line = (
            f"{len(result.done)} {verb.lower()} in {result.seconds:.1f} s"
            if result.done
            else f"up to date ({result.skipped} applied)"
        )
        return Outcome(DONE if result.done else UP_TO_DATE, result.ids, summary, line, result)

    def show_plan(
        self, target, writer, progress, *, directory, to, allow_changed, allow_out_of_order, **options
    ):
        entries = api.plan(
            "up",
            directory=directory,
            database=target.alias,
            schema=target.schema,
            to=to,
            allow_changed=allow_changed,
            allow_out_of_order=allow_out_of_order,
        )
        self.render_plan(entries, "apply", writer)
        text = f"{len(entries)} migration(s) to apply"
        return Outcome(DONE if entries else UP_TO_DATE, [], text, text)

    def show_sql(
        self,
        target,
        writer,
        progress,
        *,
        directory,
        to,
        fake,
        atomic,
        allow_changed,
        allow_out_of_order,
        **options,
    ):
        items = api.preview(
            "up",
            directory=directory,
            database=target.alias,
            schema=target.schema,
            to=to,
            fake=fake,
            atomic=atomic,
            allow_changed=allow_changed,
            allow_out_of_order=allow_out_of_order,
        )
        self.write_sql(items, writer, "No migrations to apply.")
        text = f"{sum(1 for entry, _ in items if entry is not None)} migration(s) to apply"
        return Outcome(DONE, [], text, text)

    def render_plan(self, entries, verb, writer=None):
        out = (writer or self.renderer).stdout
        if not entries:
            out.write(f"No migrations to {verb}.")
            return
        out.write(self.style.MIGRATE_HEADING(f"Planned: {verb} {len(entries)} migration(s), in order:"))
        for e in entries:
            out.write(f"  {e.id}")
