from django.core.management.base import CommandError

from nixmig import api
from nixmig.management.base import NixmigCommand


class Command(NixmigCommand):
    help = (
        "Accept intended edits of applied files (record their current checksums), or forget the progress of "
        "a partly applied / partly rolled-back no-transaction migration you settled by hand."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "ids", nargs="*", metavar="ID", help="Migrations to accept (default: every changed one)."
        )
        parser.add_argument(
            "--forget-progress",
            action="store_true",
            help="Forget the progress rows of the given ids: a partly applied migration becomes "
            "pending, a partly rolled-back one stays applied. Runs none of their SQL; use it "
            "only after undoing (or restoring) by hand what their statements did.",
        )
        parser.add_argument(
            "--lock-wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for another runner's lock (default: NIXMIG['LOCK_WAIT'], 300).",
        )

    def run(self, *, directory, database, ids, forget_progress, lock_wait, **options):
        if forget_progress:
            if not ids:
                raise CommandError(
                    "--forget-progress needs the ids of the migrations to settle "
                    "(sqlmigrate_status marks them [!])."
                )
            for mid in api.forget_progress(ids, database=database, lock_wait=lock_wait):
                if self.verbosity >= 1:
                    self.stdout.write(f"  Forgot the progress of {mid}")
            return
        accepted = api.repair(ids, directory=directory, database=database, lock_wait=lock_wait)
        if self.verbosity >= 1:
            if accepted:
                for mid in accepted:
                    self.stdout.write(f"  Recorded the new checksum of {mid}")
            else:
                self.stdout.write("No changed migrations.")
