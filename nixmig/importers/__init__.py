"""Switch to nixmig from golang-migrate, goose, dbmate, Diesel, Flyway or popx.

``import_migrations`` reads the other tool's tree (``readers``), maps it onto nixmig files
(``planner``), optionally reads the tool's tracking table (``adoption``), writes the files
and records the migrations the tool applied. Order of work: everything is read and
checked first (the source tree, the target tree, the source table), then files are
written, then records are made under the migration lock; a failure at any step leaves
what came before it untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .adoption import DEFAULT_TABLES, AdoptResult, SourceState, read_source_state, record
from .planner import ImportPlan, PlannedMigration, plan_import, write_import
from .readers import TOOLS, Source, SourceMigration, read_source

__all__ = [
    "TOOLS",
    "DEFAULT_TABLES",
    "ImportResult",
    "ImportPlan",
    "PlannedMigration",
    "Source",
    "SourceMigration",
    "SourceState",
    "AdoptResult",
    "import_migrations",
    "read_source",
    "plan_import",
    "write_import",
    "read_source_state",
    "record",
]


@dataclass
class ImportResult:
    """What an import did (or, with dry_run, would do)."""

    plan: ImportPlan
    written: list[Path] = field(default_factory=list)
    source_state: SourceState | None = None
    adopted: AdoptResult | None = None
    dry_run: bool = False


def import_migrations(
    tool: str,
    source_dir: str | Path,
    *,
    directory: str | Path | None = None,
    module: str | None = None,
    dry_run: bool = False,
    adopt: bool = False,
    database: str = "default",
    source_table: str | None = None,
    lock_wait: float | None = None,
    progress: Callable[..., None] | None = None,
) -> ImportResult:
    """Import another tool's tree into ``<directory>/<module>/``; with ``adopt``, record what it applied.

    Running it again is safe: migrations imported before (same module, version and name,
    identical files) are kept and not written again, and adoption records only what nixmig
    has not recorded yet.
    """
    from .. import api, conf

    source = read_source(tool, source_dir)
    target = Path(directory) if directory is not None else Path(conf.migrations_dir())
    plan = plan_import(source, target, module or tool)
    result = ImportResult(plan, dry_run=dry_run)
    if not adopt:
        if not dry_run:
            result.written = write_import(plan)
        return result
    connection = api.connection_for(database)
    state = result.source_state = read_source_state(connection, source, source_table)
    if dry_run:
        return result

    def write() -> None:
        result.written = write_import(plan)

    result.adopted = record(connection, plan, state, lock_wait=lock_wait, progress=progress, write=write)
    return result
