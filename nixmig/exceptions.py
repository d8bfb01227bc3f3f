"""Errors that nixmig raises. Each message says what went wrong and what to do."""

from __future__ import annotations


class NixmigError(Exception):
    """Base class: a failure with a message meant for the person running nixmig."""

    test_hint: str | None = None  # set while creating a test database: what to do next, told after it


class TreeError(NixmigError):
    """The migration tree on disk is invalid; nothing was run."""


class MigrationFailed(NixmigError):
    """A migration failed in the database and was rolled back (or partly applied)."""

    def __init__(
        self,
        message: str,
        *,
        migration_id: str = "",
        sqlstate: str | None = None,
        applied: tuple[str, ...] = (),
        file: str | None = None,
        line: int | None = None,
        failed: str = "",
    ):
        super().__init__(message)
        self.failed = failed  # the first sentence alone: what failed, where, and PostgreSQL's message
        self.migration_id = migration_id
        self.sqlstate = sqlstate
        self.applied = applied
        self.file = file  # the file and line that failed, when known (rollout reports)
        self.line = line


class PlanError(NixmigError):
    """What was asked can't be planned (unknown id, irreversible migration, ...)."""


class LockTimeout(NixmigError):
    """Another runner held the migration lock for longer than --lock-wait."""


class TrackingTableError(NixmigError):
    """The tracking table is in a state nixmig can't use safely."""


class DatabaseUnavailable(NixmigError):
    """The database could not be reached."""


class LintError(NixmigError):
    """The linter found errors in the migrations of a run; nothing was run."""


class SourceTreeError(NixmigError):
    """Another tool's migration tree can't be imported; nothing was written."""


class AdoptionError(NixmigError):
    """Another tool's tracking table can't be adopted; nothing was recorded."""


class UnsafeName(NixmigError):
    """A name can't be used in SQL as it is (a schema or table name); nothing was run."""
