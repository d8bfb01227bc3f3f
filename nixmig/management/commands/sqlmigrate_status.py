import json

from django.core.management.base import CommandError

from nixmig import api, lint
from nixmig import verify
from nixmig.management.base import NixmigCommand

MARKS = {"applied": "[X]", "pending": "[ ]", "changed": "[~]", "missing": "[?]", "failed": "[!]"}


class Command(NixmigCommand):
    help = "Show every SQL migration with its state, grouped by module, then problems and a summary."
    multi_database = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
        parser.add_argument("--check", action="store_true",
                            help="Exit 1 if anything is pending, changed, missing or failed, or any problem exists.")

    def run(self, *, json: bool, check: bool, **options):
        if options["parallel"] < 1:
            raise CommandError("--parallel must be 1 or more.")
        database = options["database"]
        several = options["all_databases"] or (not isinstance(database, str) and len(set(database or ())) > 1)
        if json and several:
            self.stdout.write(_dumps({alias: dict(status.as_dict(), lint=lint.pending_summary(status, alias))
                                     for alias, status in self.statuses(options)}))
            self.fail_unless_up_to_date(check, self.statuses_seen)
            return
        self.statuses_seen = []
        rest = {k: v for k, v in options.items() if k != "database"}
        self.for_each_database(options, lambda alias, writer: self.show(alias, writer, json, **rest))
        self.fail_unless_up_to_date(check, self.statuses_seen)

    def statuses(self, options):
        from nixmig import databases

        selection = databases.select(options["database"], all_databases=options["all_databases"])
        self.statuses_seen = [(alias, api.status(directory=options["directory"], database=alias))
                              for alias in selection.aliases]
        return self.statuses_seen

    def show(self, database, writer, json, *, directory, **options):
        status = api.status(directory=directory, database=database)
        self.verified = verify.stored_results(database)  # sqlmigrate_verify's last results: one query, or two
        self.statuses_seen.append((database, status))
        findings = lint.pending_summary(status, database)  # parses nothing when nothing is pending
        if json:
            writer.stdout.write(_dumps(dict(verify.with_results(status.as_dict(), status, self.verified), lint=findings)))
        else:
            lint_note = (f"Lint: {lint.counts_text(findings)} in the pending migrations; 'python manage.py "
                         "sqlmigrate_lint' shows them." if findings["error"] or findings["warning"] or findings["info"]
                         else None)
            self.render(status, writer, lint_note)
        c = status.counts()
        return "up to date" if status.ok else (f"{c['pending']} pending, {c['changed']} changed, "
                                               f"{c['missing']} missing, {c['failed']} failed")

    def fail_unless_up_to_date(self, check: bool, statuses) -> None:
        behind = [(alias, status) for alias, status in statuses if not status.ok]
        if not check or not behind:
            return
        messages = []
        for alias, status in behind:
            counts = status.counts()
            problems = len([p for p in status.problems if p.level != "info"])
            where = f"database {alias!r}: " if len(statuses) > 1 else ""
            messages.append(f"{where}{counts['pending']} pending, {counts['changed']} changed, "
                            f"{counts['missing']} missing, {counts['failed']} failed, {problems} problem(s)")
        raise CommandError(f"Not up to date: {'; '.join(messages)}.", returncode=1)

    def render(self, status, writer=None, lint_note: str | None = None):
        style = self.style
        v = self.verbosity
        stdout = (writer or self.renderer).stdout
        out: list[str] = []  # written at once: one write of 10,000 lines, not 10,000 writes
        paints = {"applied": str, "pending": str, "changed": style.WARNING, "missing": style.WARNING,
                  "failed": style.ERROR}
        groups = {}
        for e in status.entries:  # modules in order of their first migration
            groups.setdefault(e.module or "(no module)", []).append(e)
        for module, entries in groups.items():
            out.append(style.MIGRATE_LABEL(module))
            for e in entries:
                line = f" {MARKS[e.state]} {e.name}"
                details = []
                if e.state != "applied" and e.state != "pending":
                    details.append(e.state)
                if e.out_of_order:
                    details.append("out of order")
                if e.migration is not None and not e.migration.reversible:
                    details.append("irreversible")
                if e.id in getattr(self, "verified", {}):
                    details.append(f"verified {self.verified[e.id].label(e.migration)}")
                if e.applied_at is not None and v >= 1:
                    details.append(f"applied {e.applied_at:%Y-%m-%d %H:%M:%S}")
                if v >= 2 and e.record is not None and e.record.execution_ms is not None:
                    details.append(f"{e.record.execution_ms:.0f} ms")
                if details:
                    line = f"{line:<52} " + ", ".join(details)
                out.append(paints[e.state](line))
        if not status.entries:
            out.append("(no migrations)")
        if lint_note:  # after the migrations, before the problems
            out.append(style.ERROR(lint_note) if "error" in lint_note.split(";")[0] else lint_note)
        shown = [p for p in status.problems if p.level != "info" or v >= 1]
        if shown:
            out.append(style.MIGRATE_HEADING("Problems:"))
            for p in shown:
                paint = {"error": style.ERROR, "warning": style.WARNING, "info": str}[p.level]
                out.append(paint(f"  {p.level}: {p.message}"))
        c = status.counts()
        summary = (f"{len(status.entries)} migration(s): {c['applied']} applied, {c['pending']} pending, "
                   f"{c['changed']} changed, {c['missing']} missing, {c['failed']} failed")
        late = len(status.out_of_order)
        if late:
            summary += f", {late} out of order"
        out.append(style.MIGRATE_HEADING(summary + "."))
        stdout.write("\n".join(out))


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
