import re
from pathlib import Path

from django.core.management.base import CommandError

from nixmig import api, conf
from nixmig.management.base import NixmigCommand
from nixmig.tree import MODULE_SEGMENT_RE

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
UP_TEMPLATE = """-- {id}: up
-- Runs in one transaction together with its record (python manage.py sqlmigrate_up).
-- For statements that can't run in a transaction (CREATE INDEX CONCURRENTLY, VACUUM, ...)
-- put '-- nixmig:no-transaction' on the first line.

"""
DOWN_TEMPLATE = """-- {id}: down
-- Undo what the up file does (python manage.py sqlmigrate_down).
-- A down file with no statements is an explicit no-op rollback.

"""


class Command(NixmigCommand):
    help = "Create <MODULE>/<NNN>_<NAME>_up.sql and _down.sql, numbered after the highest number in the tree."
    uses_database = False

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("module", help="Module folder, e.g. auth or integrations/github.")
        parser.add_argument("name", help="Short name in snake_case, e.g. add_email_index.")

    def run(self, *, directory, module, name, **options):
        module = module.strip("/")
        if not module or not all(
            MODULE_SEGMENT_RE.fullmatch(s) and set(s) != {"."} for s in module.split("/")
        ):
            raise CommandError(
                f"{module!r} is not a valid module: use folder names of letters, digits, '_', '-' "
                "and '.', separated by '/'."
            )
        name = name.strip().replace(" ", "_")
        if not NAME_RE.match(name):
            raise CommandError(f"{name!r} is not a valid name: use letters, digits, '_' and '-'.")
        folder = Path(directory) if directory is not None else conf.migrations_dir()
        if not folder.exists():
            folder.mkdir(parents=True)
            if self.verbosity >= 1:
                self.stdout.write(
                    f"Created the migrations folder {folder} (NIXMIG['MIGRATIONS_DIR'] or --dir names another)."
                )
        tree = api.load_tree(folder)
        number = tree.highest_number() + 1
        bare = f"{number:03d}_{name}"
        folder = tree.directory / module
        up, down = folder / f"{bare}_up.sql", folder / f"{bare}_down.sql"
        for path in (up, down):
            if path.exists():
                raise CommandError(f"{path} exists already; pick another name.")
        folder.mkdir(parents=True, exist_ok=True)
        up.write_text(UP_TEMPLATE.format(id=f"{module}/{bare}"), encoding="utf-8")
        down.write_text(DOWN_TEMPLATE.format(id=f"{module}/{bare}"), encoding="utf-8")
        if self.verbosity >= 1:
            self.stdout.write(f"Created {up}")
            self.stdout.write(f"Created {down}")
