from nixmig.importers import DEFAULT_TABLES, TOOLS, import_migrations
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = (
        "Import another tool's migrations (golang-migrate, goose, dbmate, Diesel, Flyway, popx) as nixmig files "
        "in <dir>/<module>/, and with --adopt record what that tool applied to the database."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("src", metavar="SRC", help="The other tool's migrations folder.")
        parser.add_argument(
            "--from", dest="tool", required=True, choices=TOOLS, help="The tool that wrote SRC."
        )
        parser.add_argument("--module", help="Module folder to write into (default: the tool's name).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the mapping; write and record nothing."
        )
        parser.add_argument(
            "--adopt",
            action="store_true",
            help="Read the tool's tracking table and record the migrations it applied as applied "
            "(with the tool's applied time where it kept one). The tool's table is only read.",
        )
        parser.add_argument(
            "--source-table",
            metavar="NAME",
            help="The tool's tracking table, if configured differently (defaults: "
            + ", ".join(f"{t}: {n}" for t, n in DEFAULT_TABLES.items())
            + ").",
        )
        parser.add_argument(
            "--lock-wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for another runner's lock while adopting.",
        )

    def run(
        self, *, tool, src, directory, module, dry_run, adopt, database, source_table, lock_wait, **options
    ):
        result = import_migrations(
            tool,
            src,
            directory=directory,
            module=module,
            dry_run=dry_run,
            adopt=adopt,
            database=database,
            source_table=source_table,
            lock_wait=lock_wait,
            progress=self.progress,
        )
        if self.verbosity >= 1:
            self.render(result)

    def render(self, result) -> None:
        plan, out = result.plan, self.stdout
        applied = result.source_state.applied if result.source_state else None
        out.write(
            self.style.MIGRATE_HEADING(
                f"{plan.source.tool} {plan.source.directory} -> {plan.directory / plan.module}"
                + (" (dry run: nothing written)" if result.dry_run else "")
                + ":"
            )
        )
        for m in plan.migrations:
            mark = "" if applied is None else (" [X]" if m.source.version in applied else " [ ]")
            kept = " (imported before, kept)" if m.existing else ""
            out.write(f" {mark.strip() + ' ' if mark else ''}{m.source.up_origin} -> {m.up_path}{kept}")
            if m.source.down_origin:
                out.write(f"     {m.source.down_origin} -> {m.down_path}")
            else:
                out.write(f"     no down: {m.id} is irreversible")
            if m.renamed:
                out.write(f"     renamed: {m.source.label}_{m.source.name} -> {m.name.split('_', 1)[1]}")
            directives = sorted(set(m.up_directives) | set(m.down_directives))
            if directives:
                why = f" ({m.source.why_no_transaction})" if m.source.why_no_transaction else ""
                out.write(f"     added {', '.join(repr(d) for d in directives)}{why}")
            for warning in m.warnings:
                self.stderr.write(self.style.WARNING(f"Warning: {warning}"))
        for note in plan.notes:
            out.write(f"  {note}")
        new = len(plan.new)
        files = len(plan.files())
        verb = "Would write" if result.dry_run else "Wrote"
        out.write(
            f"{verb} {files} file(s) for {new} migration(s); {len(plan.migrations) - new} imported before."
        )
        if result.source_state is not None:
            state = result.source_state
            n_applied = sum(1 for m in plan.migrations if m.source.version in state.applied)
            if result.adopted is None:
                out.write(
                    f"{state.tool}'s table {state.table} says {n_applied} of {len(plan.migrations)} are applied; "
                    "would record them as applied (dry run)."
                )
            else:
                a = result.adopted
                out.write(
                    self.style.SUCCESS(
                        f"Adopted {state.tool}'s table {state.table}: recorded {len(a.recorded)} migration(s) as applied"
                        f", {len(a.already)} recorded before, {len(a.not_applied)} not applied by {state.tool} "
                        "(pending)."
                    )
                    + f" {state.table} was left as it was."
                )
