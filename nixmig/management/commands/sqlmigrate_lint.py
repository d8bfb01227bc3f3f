import json
import os
from collections.abc import Callable

from django.core.management.base import CommandError

from nixmig import api, lint
from nixmig.exceptions import LintError
from nixmig.management.base import NixmigCommand, add_target_arguments
from nixmig.rollout import CONTINUE, DONE, UP_TO_DATE, Outcome


class Command(NixmigCommand):
    help = (
        "Lint SQL migrations for statements that lock or rewrite big tables or break running code: the "
        "pending ones of --database (default), --all of the tree, or the IDs given."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "ids",
            nargs="*",
            metavar="ID",
            help="Lint these migrations (ids as sqlmigrate_status shows them: module/NNN_name).",
        )
        parser.add_argument(
            "--dir",
            dest="directory",
            metavar="PATH",
            help="Migrations directory (default: NIXMIG['MIGRATIONS_DIR'] or BASE_DIR/migrations_sql).",
        )
        add_target_arguments(parser, rollout=False)  # the pending migrations of each target; with --all or
        # IDs, the first --database gives the server version and table sizes
        parser.add_argument(
            "--all",
            action="store_true",
            dest="everything",
            help="Lint every migration of the tree, without a database.",
        )
        parser.add_argument(
            "--since",
            metavar="GIT_REF",
            help="Lint the migrations added or changed since this git commit, branch or tag as one plan, "
            "with every older one taken as deployed (what a pull request would deploy).",
        )
        parser.add_argument(
            "--format",
            choices=("text", "json", "github"),
            default="text",
            help="text (default), json, or github (workflow annotations).",
        )
        parser.add_argument(
            "--pg-version",
            type=int,
            metavar="N",
            help="PostgreSQL major version the rules assume (default: the server's, or "
            f"{lint.DEFAULT_PG_VERSION} without a database).",
        )
        parser.add_argument("--rules", action="store_true", help="List the rules with their levels and exit.")

    def run(self, *, ids, directory, database, everything, format, pg_version, rules, since=None, **options):
        targets: list[str] | tuple[str, ...] | None
        if isinstance(database, (list, tuple)):  # --database is repeatable (target options)
            targets, database = database, database[0] if len(database) == 1 else None
        else:
            targets = [database] if database else None
        if rules:
            self.list_rules()
            return
        if sum(map(bool, (everything, ids, since))) > 1:
            raise CommandError("Give migration ids, --all or --since, not two of them.")
        if pg_version is not None and not 9 <= pg_version <= 99:
            raise CommandError(f"--pg-version {pg_version} is not a PostgreSQL major version; write e.g. 15.")
        settings = lint.Settings.from_django()
        if everything or ids or since:
            tree = api.load_tree(directory)
            tree.raise_for_errors()
            self.warn_shared_numbers(tree, format)
            connection = api.connection_for(database) if database else None
            if since:
                report = lint.lint_since(
                    tree, since, connection=connection, pg_version=pg_version, settings=settings
                )
                scope = report.mode
            else:
                report = lint.lint_tree(
                    tree, ids, connection=connection, pg_version=pg_version, settings=settings
                )
                count = len(tree.migrations) if everything else len(ids)
                scope = f"{count} migration(s), {report.mode}"
        else:
            tree = api.load_tree(directory)
            tree.raise_for_errors()
            self.warn_shared_numbers(tree, format)

            def pending(target, writer, progress):
                alias = target.alias
                status = api.status(tree=tree, database=alias, schema=target.schema, create_table=False)
                report = (
                    lint.lint_entries(
                        status.pending,
                        connection=api.connection_for(alias),
                        pg_version=pg_version,
                        settings=settings,
                        schema=target.schema,
                    )
                    if status.pending
                    else lint.Report([], 0, pg_version)
                )
                where = f"database {alias!r}" if not target.schema and not target.url else target.key
                self.write_report(
                    report,
                    format,
                    f"{len(status.pending)} pending migration(s) of {where}, one plan over its catalog",
                    writer,
                )
                self.fail_on_errors(report)
                text = report.summary() if report.findings else "no findings"
                return Outcome(DONE if report.findings else UP_TO_DATE, [], text, text, report)

            self.tree = tree  # what a Celery rollout's workers must have (its digest)
            self.for_each_target(
                dict(options, database=targets, directory=directory),
                pending,
                done_label="with findings",
                on_error=CONTINUE,
            )
            return
        self.write_report(report, format, scope)
        self.fail_on_errors(report)

    def warn_shared_numbers(self, tree, fmt: str) -> None:
        """Say which migrations share a number (their order is module and name, not the order written)."""
        for problem in tree.problems:
            if problem.code != "duplicate_number":
                continue
            if fmt == "github":
                self.stdout.write(
                    f"::warning file={_prop(problem.file)},line=1,title={_prop('nixmig: shared number')}::"
                    f"{_data(problem.message)}"
                )
            else:
                self.stderr.write(self.style.WARNING(f"Warning: {problem.message}"))

    def fail_on_errors(self, report: lint.Report) -> None:
        errors = report.errors
        if errors:
            raise LintError(
                f"Lint found {len(errors)} error(s). Rewrite each statement as its fix says, or "
                "suppress a finding next to its statement with '-- nixmig:allow rule-id: reason'."
            )

    def write_report(self, report: lint.Report, fmt: str, scope: str, writer=None) -> None:
        out = (writer or self).stdout
        if fmt == "json":
            out.write(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
            return
        if fmt == "github":
            for f in report.findings:
                kind = {"error": "error", "warning": "warning", "info": "notice"}[f.level]
                path = os.path.relpath(f.path) if f.path else f.file
                lock = f.lock_text()
                text = f"{f.statement}\n{lock + ': ' if lock else ''}{f.message}\nFix: {f.fix}"
                out.write(
                    f"::{kind} file={_prop(path)},line={f.line},col={f.column},"
                    f"title={_prop('nixmig lint: ' + f.rule)}::{_data(text)}"
                )
            return
        style: dict[str, Callable[[str], str]] = {
            "error": self.style.ERROR,
            "warning": self.style.WARNING,
            "info": str,
        }
        for f in report.findings:
            first, rest = lint.render(f).split("\n", 1)
            out.write(style[f.level](first))
            out.write(rest)
        if report.findings:
            out.write(
                self.style.MIGRATE_HEADING(
                    f"{report.summary()} ({scope}, PostgreSQL {report.pg_version}"
                    f"{', tables sized' if report.sized else ''})."
                )
            )
        elif self.verbosity >= 1:
            out.write(f"No findings in {scope}.")

    def list_rules(self) -> None:
        settings = lint.Settings.from_django()
        for rule in lint.RULES.values():
            self.stdout.write(f"{rule.id:<38} {settings.levels[rule.id]:<8} {rule.summary}")


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
