import json

from django.core.management.base import CommandError

from nixmig import api
from nixmig.management.base import NixmigCommand

MARKS = {"applied": "[X]", "pending": "[ ]", "changed": "[~]", "missing": "[?]", "failed": "[!]"}


class Command(NixmigCommand):
    help = "Show every SQL migration with its state, grouped by module, then problems and a summary."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
        parser.add_argument("--check", action="store_true",
                            help="Exit 1 if anything is pending, changed, missing or failed, or any problem exists.")

    def run(self, *, directory, database, json: bool, check: bool, **options):
        status = api.status(directory=directory, database=database)
        if json:
            self.stdout.write(_dumps(status.as_dict()))
        else:
            self.render(status)
        if check and not status.ok:
            counts = status.counts()
            problems = len([p for p in status.problems if p.level != "info"])
            raise CommandError(
                f"Not up to date: {counts['pending']} pending, {counts['changed']} changed, {counts['missing']} "
                f"missing, {counts['failed']} failed, {problems} problem(s).", returncode=1)

    def render(self, status):
        style = self.style
        v = self.verbosity
        groups = {}
        for e in status.entries:  # modules in order of their first migration
            groups.setdefault(e.module or "(no module)", []).append(e)
        for module, entries in groups.items():
            self.stdout.write(style.MIGRATE_LABEL(module))
            for e in entries:
                line = f" {MARKS[e.state]} {e.name}"
                details = []
                if e.state != "applied" and e.state != "pending":
                    details.append(e.state)
                if e.out_of_order:
                    details.append("out of order")
                if e.migration is not None and not e.migration.reversible:
                    details.append("irreversible")
                if e.applied_at is not None and v >= 1:
                    details.append(f"applied {e.applied_at:%Y-%m-%d %H:%M:%S}")
                if v >= 2 and e.record is not None and e.record.execution_ms is not None:
                    details.append(f"{e.record.execution_ms:.0f} ms")
                if details:
                    line = f"{line:<52} " + ", ".join(details)
                paint = {"applied": str, "pending": str, "changed": style.WARNING, "missing": style.WARNING,
                         "failed": style.ERROR}[e.state]
                self.stdout.write(paint(line))
        if not status.entries:
            self.stdout.write("(no migrations)")
        shown = [p for p in status.problems if p.level != "info" or v >= 1]
        if shown:
            self.stdout.write(style.MIGRATE_HEADING("Problems:"))
            for p in shown:
                paint = {"error": style.ERROR, "warning": style.WARNING, "info": str}[p.level]
                self.stdout.write(paint(f"  {p.level}: {p.message}"))
        c = status.counts()
        summary = (f"{len(status.entries)} migration(s): {c['applied']} applied, {c['pending']} pending, "
                   f"{c['changed']} changed, {c['missing']} missing, {c['failed']} failed")
        late = len(status.out_of_order)
        if late:
            summary += f", {late} out of order"
        self.stdout.write(style.MIGRATE_HEADING(summary + "."))


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
