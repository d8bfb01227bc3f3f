import json
from collections.abc import Callable
from types import SimpleNamespace

from django.core.management.base import CommandError

from nixmig import api, lint, verify
from nixmig.management.base import NixmigCommand
from nixmig.plan import Entry, Status
from nixmig.rollout import CONTINUE, DONE, UP_TO_DATE, Outcome
from nixmig.targets import Target

MARKS = {
    "applied": "[X]",
    "pending": "[ ]",
    "changed": "[~]",
    "missing": "[?]",
    "partly_applied": "[!]",
    "partly_rolled_back": "[!]",
}


class Command(NixmigCommand):
    help = "Show every SQL migration with its state, grouped by module, then problems and a summary."
    multi_database = True
    rollout_options = False  # status changes nothing: no canary, no report

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 if anything is pending, changed, missing or partly applied or rolled "
            "back, or any error or warning problem exists.",
        )

    def run(self, *, json: bool, check: bool, **options):
        self.statuses_seen: list[tuple[Target, Status, dict[str, verify.StoredResult]]] = []
        self.json = json
        self.tree = api.load_tree(options["directory"])  # read once, whatever the number of targets
        verbosity = self.verbosity
        if json:
            self.verbosity = 0  # JSON only: no headings, lines or summary around it
        try:
            rollout = self.for_each_target(
                options,
                lambda target, writer, progress: self.show(target, writer, **options),
                done_label="not up to date",
                on_error=CONTINUE,
                finish=self.write_all_json if json else None,
            )
        finally:
            self.verbosity = verbosity
        if json and rollout is None and self.statuses_seen:  # one target: its status alone, as before
            target, status, verified = self.statuses_seen[0]
            self.stdout.write(
                _dumps(
                    dict(
                        verify.with_results(status.as_dict(), status, verified),
                        lint=lint.pending_summary(status, target.alias),
                    )
                )
            )
        if rollout is not None and rollout.meta.get("executor") == "celery":  # read on the workers
            self.fail_unless_up_to_date(
                check, [(r.target.key, _Remote(r)) for r in rollout.results if r.status in (DONE, UP_TO_DATE)]
            )
            return
        self.fail_unless_up_to_date(check, [(t.key, s) for t, s, _ in self.statuses_seen])

    def write_all_json(self, rollout) -> None:
        """Print one JSON object: per target its status (or its error)."""
        out = {}
        for r in rollout.results:
            status = r.payload
            if isinstance(status, dict):  # read on a Celery worker
                out[r.target.key] = status
            elif status is not None:
                out[r.target.key] = dict(status.as_dict(), lint=lint.pending_summary(status, r.target.alias))
            else:
                out[r.target.key] = {"status": r.status, "error": r.error, "reason": r.reason or None}
        self.stdout.write(_dumps(out))

    def show(self, target, writer, *, directory, **options):
        status = api.status(directory=directory, database=target.alias, schema=target.schema, tree=self.tree)
        # sqlmigrate_verify's last results (one query, or two); verify works on whole databases
        verified = verify.stored_results(target.alias) if not target.schema else {}
        self.statuses_seen.append((target, status, verified))
        text = "up to date" if status.ok else status.counts_text()
        if self.json or self.compact:
            return Outcome(UP_TO_DATE if status.ok else DONE, [], text, text, status)
        findings = lint.pending_summary(status, target.alias)  # parses nothing when nothing is pending
        lint_note = (
            f"Lint: {lint.counts_text(findings)} in the pending migrations; 'python manage.py "
            "sqlmigrate_lint' shows them."
            if findings["error"] or findings["warning"] or findings["info"]
            else None
        )
        self.render(status, writer, lint_note, verified)
        return Outcome(UP_TO_DATE if status.ok else DONE, [], text, text, status)

    def fail_unless_up_to_date(self, check: bool, statuses) -> None:
        behind = [(alias, status) for alias, status in statuses if not status.ok]
        if not check or not behind:
            return
        messages = []
        for alias, status in behind:
            problems = len([p for p in status.problems if p.level != "info"])
            where = f"database {alias!r}: " if len(statuses) > 1 else ""
            messages.append(f"{where}{status.counts_text()}, {problems} problem(s)")
        raise CommandError(f"Not up to date: {'; '.join(messages)}.", returncode=1)

    def render(self, status, writer=None, lint_note: str | None = None, verified: dict | None = None):
        style = self.style
        v = self.verbosity
        stdout = (writer or self.renderer).stdout
        out: list[str] = []  # written at once: one write of 10,000 lines, not 10,000 writes
        paints: dict[str, Callable[[str], str]] = {
            "applied": str,
            "pending": str,
            "changed": style.WARNING,
            "missing": style.WARNING,
            "partly_applied": style.ERROR,
            "partly_rolled_back": style.ERROR,
        }
        groups: dict[str, list[Entry]] = {}
        for e in status.entries:  # modules in order of their first migration
            groups.setdefault(e.module or "(no module)", []).append(e)
        append = out.append
        for module, entries in groups.items():
            append(style.MIGRATE_LABEL(module))
            for e in entries:  # one line per migration: kept lean, as status prints 10,000 of them
                state, record, migration = e.state, e.record, e.migration
                if (
                    state == "applied"
                    and v == 1
                    and not e.out_of_order
                    and migration is not None
                    and migration.down is not None
                    and record is not None
                    and record.applied_at is not None
                    and not (verified and e.id in verified)
                ):  # the usual line, as the general case below writes it
                    append(f" [X] {e.name:<47} applied {record.applied_at.isoformat(' ', 'seconds')[:19]}")
                    continue
                line = f" {MARKS[state]} {e.name}"
                details = []
                if state != "applied" and state != "pending":
                    details.append(state.replace("_", " "))
                if e.out_of_order:
                    details.append("out of order")
                if migration is not None and migration.down is None:
                    details.append("irreversible")
                if verified and e.id in verified:
                    details.append(f"verified {verified[e.id].label(migration)}")
                if record is not None and record.applied_at is not None and v >= 1:
                    # = f"{applied_at:%Y-%m-%d %H:%M:%S}", without strftime's cost per line
                    details.append("applied " + record.applied_at.isoformat(" ", "seconds")[:19])
                if v >= 2 and record is not None and record.execution_ms is not None:
                    details.append(f"{record.execution_ms:.0f} ms")
                if details:
                    line = f"{line:<52} " + ", ".join(details)
                append(paints[state](line))
        if not status.entries:
            out.append("(no migrations)")
        if lint_note:  # after the migrations, before the problems
            out.append(style.ERROR(lint_note) if "error" in lint_note.split(";")[0] else lint_note)
        shown = [p for p in status.problems if p.level != "info" or v >= 1]
        if shown:
            out.append(style.MIGRATE_HEADING("Problems:"))
            problem_paints: dict[str, Callable[[str], str]] = {
                "error": style.ERROR,
                "warning": style.WARNING,
                "info": str,
            }
            for p in shown:
                out.append(problem_paints[p.level](f"  {p.level}: {p.message}"))
        summary = f"{len(status.entries)} migration(s): {status.counts_text(applied=True)}"
        late = len(status.out_of_order)
        if late:
            summary += f", {late} out of order"
        out.append(style.MIGRATE_HEADING(summary + "."))
        stdout.write("\n".join(out))


class _Remote:
    """What --check needs of a status read on a Celery worker: whether it is up to date, its counts."""

    def __init__(self, result):
        self.ok = result.status == UP_TO_DATE
        self.text = result.summary
        problems = (result.payload or {}).get("problems", []) if isinstance(result.payload, dict) else []
        self.problems = [SimpleNamespace(level=p.get("level")) for p in problems]

    def counts_text(self) -> str:
        return self.text


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
