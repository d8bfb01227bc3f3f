import json
import signal
import threading

from django.core.management.base import CommandError

from nixmig import conf, sqlnames, verify
from nixmig.exceptions import NixmigError
from nixmig.management.base import NixmigCommand
from nixmig.rollout import CONTINUE, DONE, Outcome

MARKS = {
    verify.EXACT: "[=]",
    verify.WARNING: "[~]",
    verify.NOT_EXACT: "[!]",
    verify.IRREVERSIBLE: "[>]",
    verify.FAILED: "[X]",
    verify.NOT_RUN: "[ ]",
}


class Command(NixmigCommand):
    help = (
        "Prove that every down file reverses its up file, in a scratch database (up, down, up again, "
        "comparing schema snapshots); with --drift, compare the live database with its applied migrations. "
        "Exit 0 when all is exact, 1 when a round trip is not exact or drift is found, 2 when it can't run."
    )
    multi_database = True  # the target options: each database target is verified in turn
    rollout_options = False

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object (for CI) instead of text."
        )
        parser.add_argument(
            "--from",
            dest="start",
            metavar="ID",
            help="Check from this migration on; earlier ones are applied without checks.",
        )
        parser.add_argument(
            "--to", metavar="ID", help="Check up to and including this migration; stop there."
        )
        parser.add_argument(
            "--drift",
            action="store_true",
            help="Compare the live --database (read only) with a scratch database brought to the "
            "same applied migrations, instead of checking round trips.",
        )
        parser.add_argument(
            "--keep", action="store_true", help="Keep the scratch database at the end and print its name."
        )
        parser.add_argument(
            "--setup-sql",
            action="append",
            metavar="FILE",
            help="An SQL file run on the scratch database after Django's migrations and before the tree "
            "(after NIXMIG['VERIFY_SETUP']): what your deploy makes outside the tree. Repeatable.",
        )
        parser.add_argument(
            "--ignore",
            action="append",
            metavar="PATTERN",
            help="With --drift, leave out objects whose name (or whose table's) matches this pattern, "
            "e.g. 'legacy_*' (besides NIXMIG['DRIFT_IGNORE']). Repeatable.",
        )

    def run(self, *, directory, database, json, start, to, drift, keep, setup_sql, ignore, **options):
        if drift and (start or to):
            raise CommandError(
                "--drift compares the whole applied set; leave out --from and --to.", returncode=2
            )
        if ignore and not drift:
            raise CommandError(
                "--ignore leaves objects out of --drift; add --drift or leave it out.", returncode=2
            )
        job = dict(
            directory=directory,
            start=start,
            to=to,
            drift=drift,
            keep=keep,
            setup_sql=setup_sql,
            ignore=ignore,
        )
        if (
            getattr(self, "worker", None) is not None
            or (options.get("executor") or conf.rollout("EXECUTOR")) == "celery"
        ):
            return self.on_workers(database, json, job, options)
        try:
            selection = self.select_targets(dict(options, database=database))
        except NixmigError as exc:
            raise CommandError(str(exc), returncode=2) from None
        try:
            if len(selection.targets) == 1:
                return self.verify_one(selection.targets[0], json, job)
            failed: list[tuple[str, CommandError]] = []
            reports: dict[str, dict] = {}  # target key -> its JSON report
            for target in selection.targets:
                if not json and self.verbosity >= 1:
                    label = "Schema" if target.schema else "Database"
                    self.stdout.write(self.style.MIGRATE_LABEL(f"{label} {target.key}:"))
                try:
                    self.verify_one(target, json, job, reports)
                except CommandError as exc:
                    failed.append((target.key, exc))
                    if not json:
                        self.stderr.write(self.style.ERROR(f"{target.key}: {exc}"))
            if json:
                self.stdout.write(_dumps(reports))
            if failed:
                raise CommandError(
                    f"{len(failed)} of {len(selection.targets)} target(s) are not exact or could "
                    f"not be verified: {', '.join(k for k, _ in failed)}.",
                    returncode=max(exc.returncode for _, exc in failed),
                )
        finally:
            selection.close()

    def on_workers(self, database, as_json: bool, job: dict, options: dict) -> None:
        """Verify each target in a Celery task (--executor celery), or, inside the task, its one target."""

        def one(target, writer, progress):
            try:
                self.verify_one(target, as_json, job)
            except CommandError as exc:
                raise NixmigError(str(exc)) from None
            text = "no drift" if job["drift"] else "every round trip exact"
            return Outcome(DONE, [], text, text)

        self.for_each_target(
            dict(options, database=database, directory=job["directory"]),
            one,
            done_label="verified",
            on_error=CONTINUE,
        )

    def verify_one(self, target, as_json, job, reports=None):
        """Verify one target; with ``reports``, keep its JSON there instead of printing it."""
        self.progress_out = self.stderr if as_json else self.stdout
        previous = _terminate_as_interrupt()
        common = dict(
            directory=job["directory"],
            database=target.alias,
            schema=target.schema,
            keep=job["keep"],
            setup_sql=job["setup_sql"] or (),
            progress=self.event,
        )
        try:
            if job["drift"]:
                report = verify.drift(ignore=job["ignore"] or (), **common)
            else:
                report = verify.verify(start=job["start"], to=job["to"], **common)
        except NixmigError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted; the scratch database was dropped (unless --keep).", returncode=2
            ) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if as_json and reports is not None:
            reports[target.key] = report.as_dict()
        elif as_json:
            self.stdout.write(_dumps(report.as_dict()))
        else:
            self.render(report)
        if not report.ok:
            raise CommandError(
                report.summary() + (" See the report above." if not as_json else ""), returncode=1
            )

    # -- progress ------------------------------------------------------------------------

    def event(self, event: str, **data) -> None:
        out = self.progress_out
        if self.verbosity < 1:
            return
        if event == "warning":
            self.stderr.write(self.style.WARNING(f"Warning: {data['message']}"))
        elif event == "scratch" and self.verbosity >= 2:
            out.write(f"Scratch database: {data['name']}")
        elif event == "rebuild" and self.verbosity >= 2:
            out.write(
                f" (the scratch database was rebuilt as {data['scratch']}: a failed step left it in an unknown "
                "state)",
                ending="",
            )
        elif event == "verify_start":
            out.write(f"[{data['index']}/{data['total']}] verify {data['migration'].id} ...", ending="")
            out.flush()
        elif event == "verify_result":
            result = data["result"]
            timing = f" ({result.seconds * 1000:.0f} ms)" if self.verbosity >= 2 else ""
            out.write(" " + self._paint(result.result)(result.result) + timing)

    def _paint(self, result: str):
        return {
            verify.EXACT: self.style.SUCCESS,
            verify.WARNING: self.style.WARNING,
            verify.IRREVERSIBLE: str,
            verify.NOT_RUN: str,
        }.get(result, self.style.ERROR)

    # -- the report ----------------------------------------------------------------------

    def render(self, report: verify.VerifyReport) -> None:
        out = self.stdout
        if report.results and self.verbosity >= 1:
            groups = (
                ("Round trips that are not exact:", (verify.NOT_EXACT, verify.FAILED)),
                ("Round trips with warnings:", (verify.WARNING,)),
                ("Irreversible (no down file):", (verify.IRREVERSIBLE,)),
                ("Not checked (their up fails after an earlier up failed):", (verify.NOT_RUN,)),
            )
            for heading, kinds in groups:
                shown = [r for r in report.results if r.findings and r.result in kinds]
                if not shown:
                    continue
                out.write(self.style.MIGRATE_HEADING(heading))
                for r in shown:
                    out.write(self._paint(r.result)(f" {MARKS[r.result]} {r.id}: {r.result}"))
                    if r.result == verify.IRREVERSIBLE:
                        continue  # the heading says it all
                    for f in r.findings:
                        paint = self.style.WARNING if f.level == "warning" else str
                        out.write(paint(f"     - {f.message}"))
        if report.drift is not None:
            self.render_drift(report.drift)
        if report.kept:
            out.write(
                f"Kept the scratch database {report.scratch} (--keep); drop it with "
                f"DROP DATABASE {sqlnames.ident(report.scratch)}."
            )
        if self.verbosity >= 2 and report.snapshots:
            out.write(
                f"{report.snapshots} snapshot(s) in {report.snapshot_seconds:.2f} s "
                f"({1000 * report.snapshot_seconds / report.snapshots:.1f} ms each)."
            )
        if self.verbosity >= 1:
            paint = self.style.SUCCESS if report.ok else self.style.ERROR
            out.write(paint(report.summary()))
            if report.stored and self.verbosity >= 2:
                out.write(
                    f"Stored the results in database {report.database!r} (sqlmigrate_status shows them)."
                )

    def render_drift(self, drift: verify.DriftReport) -> None:
        out = self.stdout
        for note in drift.notes:
            out.write(self.style.WARNING(f"Note: {note}"))
        groups = (
            ("Only in the live database (made by hand?):", drift.only_live, "after"),
            ("Only in the tree (dropped or never applied by hand?):", drift.only_tree, "before"),
        )
        for heading, diffs, side in groups:
            if diffs:
                out.write(self.style.MIGRATE_HEADING(heading))
                for d in diffs:
                    out.write(f"  {d.kind} {d.display_name}: {getattr(d, side)}")
        if drift.different:
            out.write(self.style.MIGRATE_HEADING("Different:"))
            for d in drift.different:
                out.write(f"  {d.kind} {d.display_name}")
                out.write(f"    tree: {d.before}")
                out.write(f"    live: {d.after}")


def _terminate_as_interrupt():
    """Treat SIGTERM (a cancelled CI job) like Ctrl-C, so the scratch database is dropped; return the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)
