from nixmig import api
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = "Accept intended edits of applied files: record their current checksums."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("ids", nargs="*", metavar="ID", help="Migrations to accept (default: every changed one).")
        parser.add_argument("--lock-wait", type=float, metavar="SECONDS")

    def run(self, *, directory, database, ids, lock_wait, **options):
        accepted = api.repair(ids, directory=directory, database=database, lock_wait=lock_wait)
        if self.verbosity >= 1:
            if accepted:
                for mid in accepted:
                    self.stdout.write(f"  Recorded the new checksum of {mid}")
            else:
                self.stdout.write("No changed migrations.")
