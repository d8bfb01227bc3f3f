"""The tracking table in the admin: read-only, with what is pending on disk and the SQL of each migration.

Nobody may add, change or delete a record, superusers included: a row means "this
migration's SQL is in the schema", so editing rows would make the table lie.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connections
from django.http import HttpRequest

from . import (
    api,
    conf,
    lint,
    verify,  # noqa: E402 - sqlmigrate_verify's stored results, one column
)
from .exceptions import NixmigError
from .highlight import highlight_sql
from .models import MigrationRecord
from .plan import Status
from .recorder import NIXMIG_COLUMNS, Recorder
from .tree import Migration, Tree, load_migration, paused_gc, unchanged_tree_key

PENDING_SHOWN = 100
# Summaries of the status above the changelist, by (database, tree, tracking table): see _summary.
_SUMMARIES: dict[tuple, tuple[Status, dict | None]] = {}


def _cached(request: HttpRequest, key: str, compute):
    """Compute a value once per request (a ModelAdmin is shared by all requests, so not on self)."""
    cache = request.__dict__.setdefault("_nixmig", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _load(request: HttpRequest) -> tuple[Tree | None, str | None]:
    """Return the migration tree read once per request, or None and why it can't be read."""

    def load():
        try:
            return api.load_tree(), None
        except NixmigError as exc:
            return None, str(exc)

    return _cached(request, "tree", load)


def _tree(request: HttpRequest) -> Tree | None:
    return _load(request)[0]


def _find(tree: Tree | None, record: MigrationRecord) -> Migration | None:
    """Return the file pair of a record; a Go migrator row without module matches a unique bare name."""
    if tree is None:
        return None
    if record.module is not None:
        return tree.get(f"{record.module}/{record.name}" if record.module else record.name)
    same = [m for m in tree.migrations if m.name == record.name]
    return same[0] if len(same) == 1 else None


def checksum_state(record: MigrationRecord, tree: Tree | None) -> str:
    """Return 'ok', 'changed', 'file missing' or 'not recorded' (a Go migrator row)."""
    migration = _find(tree, record)
    if migration is None:
        return "file missing"
    if not record.checksum:
        return "not recorded"
    return "ok" if record.checksum == migration.checksum else "changed"


@admin.register(MigrationRecord)
class MigrationRecordAdmin(admin.ModelAdmin):
    list_filter = ("module",)
    search_fields = ("name", "module")
    date_hierarchy = "applied_at"
    ordering = ("-applied_at", "-id")
    list_per_page = 100
    actions = ()
    fields = ("name", "module", "applied_at", "execution_ms", "checksum")

    # -- read-only for everyone --------------------------------------------------------

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    # -- changelist --------------------------------------------------------------------

    @admin.display(description="migration", ordering="name")
    def migration_id(self, record: MigrationRecord) -> str:
        return record.migration_id

    @admin.display(description="execution time", ordering="execution_ms")
    def execution_time(self, record: MigrationRecord) -> str:
        return "-" if record.execution_ms is None else f"{record.execution_ms:.0f} ms"

    def get_list_display(self, request):
        tree = _tree(request)

        @admin.display(description="checksum")
        def checksum(record: MigrationRecord) -> str:
            return checksum_state(record, tree)

        verified = _cached(request, "verified", lambda: verify.stored_results(self.database()))

        @admin.display(description="verify")
        def verify_result(record: MigrationRecord) -> str:  # sqlmigrate_verify's last result, if any
            found = verified.get(record.migration_id)
            return "-" if found is None else found.label(_find(tree, record))

        return ("migration_id", "module", "applied_at", "execution_time", checksum, verify_result)

    def database(self) -> str:
        return MigrationRecord.objects.db

    def _table_usable(self, request) -> bool:
        """True when the tracking table exists with nixmig's columns (the model can read it)."""

        def probe():
            connection = connections[self.database()]
            recorder = Recorder(connection)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT array(SELECT attname::text FROM pg_attribute WHERE attrelid = "
                        "to_regclass(%s) AND attnum > 0 AND NOT attisdropped)",
                        [recorder.qtable],
                    )
                    columns = set(cursor.fetchone()[0])
            except DatabaseError:
                return False
            return {"id", "name", "applied_at", *NIXMIG_COLUMNS} <= columns

        return _cached(request, "table_usable", probe)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if self._table_usable(request) else queryset.none()

    def _require_view_permission(self, request) -> None:
        """Refuse before any work: the status above the list reads the tree, the table and lint results."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied

    def changelist_view(self, request, extra_context=None):
        self._require_view_permission(request)
        context = {"nixmig": self.status_context(request), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    def _summary(self, request, alias: str) -> tuple[Status, dict | None]:
        """Return the status (without the catalog's leftovers) and the lint counts of its pending files.

        Kept per process under a key naming the tree (the checksum cache's, from stat() alone) and
        the tracking table's rows (a digest the server computes): a request whose tree and rows are
        those of an earlier one reuses its summary instead of rebuilding an entry per migration.
        """
        directory = conf.migrations_dir()
        tree_key = unchanged_tree_key(
            directory,
            allow_empty=bool(conf.get("ALLOW_EMPTY")),
            checksum_cache=conf.checksum_cache(directory),
            max_file_bytes=conf.max_file_bytes(),
        )
        key = None
        if tree_key is not None:
            table_key = Recorder(connections[alias]).fingerprint()
            key = (alias, tree_key, table_key) if table_key is not None else None
        known = _SUMMARIES.get(key) if key is not None else None
        if known is not None:
            request.__dict__.setdefault("_nixmig", {})["tree"] = (known[0].tree, None)
            return known
        tree, error = _load(request)
        if tree is None:
            raise NixmigError(error or "The migrations directory can't be read.")
        with paused_gc():  # tens of thousands of objects, no cycles: no collector passes over the heap
            status = api.status(tree=tree, database=alias, create_table=False, leftovers=False)
        found = None
        if status.pending:
            try:
                found = lint.pending_summary(status, alias)
            except (NixmigError, DatabaseError) as exc:
                found = {"migrations": {}, "failed": str(exc).strip()}
        if key is not None:
            if len(_SUMMARIES) >= 4:
                _SUMMARIES.clear()
            _SUMMARIES[key] = (status, found)
        return status, found

    def status_context(self, request) -> dict:
        """What the changelist shows above the records: pending ids in run order and the problems."""
        alias = self.database()
        context = {"database": alias, "table_usable": self._table_usable(request)}
        try:
            status, found = self._summary(request, alias)
            status = api.with_leftovers(status, connections[alias])  # the catalog's: one query each time
        except (NixmigError, DatabaseError) as exc:
            context["error"] = str(exc).strip()
            return context
        pending = status.pending
        counts = status.counts()
        context.update(
            pending=pending[:PENDING_SHOWN],
            pending_count=len(pending),
            pending_more=max(len(pending) - PENDING_SHOWN, 0),
            problems=[p for p in status.problems if p.level in ("error", "warning")],
            notes=[p for p in status.problems if p.level == "info" and p.code != "not_checked"],
            not_checked=next((p.message for p in status.problems if p.code == "not_checked"), None),
            changed=counts["changed"],
            missing=counts["missing"],
            applied=counts["applied"] + counts["changed"],
            hint=f"python manage.py sqlmigrate_up{'' if alias == 'default' else ' --database ' + alias}",
        )
        if pending and found is not None:
            context.update(
                lint=found,
                lint_text=lint.counts_text(found),
                lint_rows=[(mid, lint.counts_text(c)) for mid, c in found["migrations"].items()],
            )
        return context

    # -- detail ------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._require_view_permission(request)
        record = self.get_object(request, object_id) if self._table_usable(request) else None
        context = dict(extra_context or {})
        if record is not None:
            context["nixmig_files"] = self.sql_files(request, record)
        return super().change_view(request, object_id, form_url, extra_context=context)

    def sql_files(self, request, record: MigrationRecord) -> list[dict]:
        """The record's up and down files from disk, highlighted, each with a notice when it is off."""
        if record.module is not None:  # read its two files only: the page's time does not grow with the tree
            directory = conf.migrations_dir()
            migration = load_migration(
                directory, record.module, record.name, allow_empty=bool(conf.get("ALLOW_EMPTY"))
            )
            where = str(directory)
        else:  # a Go migrator row names no module: find its unique bare name in the tree
            tree = _tree(request)
            migration = _find(tree, record)
            where = str(tree.directory) if tree is not None else "the migrations directory (it can't be read)"
        if migration is None:
            return [
                {
                    "label": "Up SQL",
                    "level": "error",
                    "notice": f"The files of {record.migration_id} are missing from {where}.",
                }
            ]
        up = {"label": "Up SQL", "path": migration.up.relpath, "html": highlight_sql(migration.up.text)}
        if not record.checksum:
            up.update(
                level="info",
                notice="No checksum was recorded for this row (another runner wrote it), "
                "so edits since it was applied can't be detected.",
            )
        elif record.checksum != migration.checksum:
            up.update(
                level="warning",
                notice=f"The file was changed after it was applied: its checksum is {migration.checksum}, "
                f"the recorded one {record.checksum}. The database ran the earlier text. Undo the "
                "edit, or accept it with 'python manage.py sqlmigrate_repair'.",
            )
        if migration.down is None:
            down = {
                "label": "Down SQL",
                "level": "info",
                "notice": f"There is no down file ({migration.name}_down.sql): this migration is irreversible.",
            }
        else:
            try:  # a down file is read when first used: this may be the first time, and it may be unusable
                down = {
                    "label": "Down SQL",
                    "path": migration.down.relpath,
                    "html": highlight_sql(migration.down.text),
                }
                if migration.down.is_empty:
                    down.update(level="info", notice="The down file is empty: rolling back is a no-op.")
            except NixmigError as exc:
                down = {
                    "label": "Down SQL",
                    "path": migration.down.relpath,
                    "level": "error",
                    "notice": str(exc),
                }
        return [up, down]
