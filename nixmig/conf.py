"""Settings, read at access time from ``settings.NIXMIG`` so ``override_settings`` works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "MIGRATIONS_DIR": None,  # None: BASE_DIR / "migrations_sql"
    "TABLE": "migrations",
    "LOCK_TIMEOUT": "10s",  # SET LOCAL lock_timeout per transactional migration
    "STATEMENT_TIMEOUT": "0",  # 0 = no limit: backfills may legitimately run long
    "LOCK_RETRIES": 3,  # retries after lock_not_available, with backoff
    "LOCK_WAIT": 300,  # seconds to wait for the migration lock
    "APPLY_ON_STARTUP": False,
    "RUN_WITH_MIGRATE": False,
    "APPLICATION_NAME": "nixmig",
    "TEST_APPLY": True,  # test databases get the SQL tree after Django's migrations (nixmig.testing)
    "TEST_TEMPLATE": True,  # ... by copying a template database built once per tree
    "TEST_SPARES": 1,  # copies of the template made in the background for the next test databases
    "TEST_REBUILD_CHANGED": False,  # --keepdb: re-create a kept test database whose applied files were edited
    "ALLOW_EMPTY": False,  # accept empty / comment-only up files as no-op migrations (imported trees)
    "UNIQUE_NUMBERS": False,  # True: migrations that share a number are an error, not a warning
    "MAX_FILE_BYTES": 64 * 1024 * 1024,  # larger migration files are refused (None: no limit)
    "TARGETS": None,  # a callable (or its dotted path) returning rollout targets (nixmig.targets)
    "VERIFY_DATABASE_URL": None,  # the server of sqlmigrate_verify's scratch databases (default: the target's)
    "VERIFY_SETUP": None,  # SQL files (or a callable) making what a deploy makes outside the tree
    "DRIFT_IGNORE": (),  # name patterns that sqlmigrate_verify --drift leaves out
    "CHECKSUM_CACHE": True,  # True: <migrations dir>/__pycache__; a folder; False: read every up file each run
    # How a rollout over many targets runs (nixmig.rollout): EXECUTOR "threads" (this process) or
    # "celery" (nixmig.tasks on Celery workers); QUEUE the Celery queue of a target that names none
    # (a name, or a callable mapping a Target to a name); CELERY_APP the dotted
    # path of the project's Celery app when it is not found the usual way.
    "ROLLOUT": {},
}

ROLLOUT_DEFAULTS: dict[str, Any] = {"EXECUTOR": "threads", "QUEUE": "nixmig", "CELERY_APP": None}


def get(key: str) -> Any:
    """Return the value of NIXMIG[key], or its default."""
    from django.conf import settings

    return getattr(settings, "NIXMIG", {}).get(key, DEFAULTS[key])


def rollout(key: str) -> Any:
    """Return NIXMIG['ROLLOUT'][key], or its default."""
    return (get("ROLLOUT") or {}).get(key, ROLLOUT_DEFAULTS[key])


def migrations_dir() -> Path:
    """Return the configured migrations directory."""
    value = get("MIGRATIONS_DIR")
    if value:
        return Path(value)
    from django.conf import settings

    base = getattr(settings, "BASE_DIR", None)
    return Path(base) / "migrations_sql" if base else Path.cwd() / "migrations_sql"


def table() -> str:
    """Return the tracking table's name (optionally ``schema.table``)."""
    return get("TABLE")


def duration(key: str) -> str:
    """Return NIXMIG[key] as a PostgreSQL duration ('10s', '500ms', '0'), or raise a clear error."""
    from .exceptions import NixmigError
    from .tree import TIMEOUT_RE

    value = str(get(key)).strip()
    if not TIMEOUT_RE.match(value):
        raise NixmigError(
            f"NIXMIG[{key!r}] = {value!r} is not a duration; use e.g. '10s', '500ms' or '0' (off)."
        )
    return value


def checksum_cache(directory: str | Path) -> Path | None:
    """Return the folder of the checksum cache for ``directory`` (NIXMIG['CHECKSUM_CACHE']), or None when off."""
    value = get("CHECKSUM_CACHE")
    if value is True:
        return Path(directory) / "__pycache__"
    if not value:
        return None
    return Path(value)


def max_file_bytes() -> int | None:
    """Return NIXMIG['MAX_FILE_BYTES'] (None: no limit), or raise a clear error."""
    from .exceptions import NixmigError

    value = get("MAX_FILE_BYTES")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NixmigError(
            f"NIXMIG['MAX_FILE_BYTES'] = {value!r} is not a size; give a number of bytes (e.g. "
            "64 * 1024 * 1024) or None for no limit."
        )
    return value
