"""Start ``manage.py sqlmigrate_*`` runners that can be killed, and run commands in-process.

Two ways to start a runner process, both a separate OS process with its own connection:
- ``spawn_manage``: ``python manage.py ...`` (what a deploy script runs; ~0.5 s of start-up).
- ``Forkserver.spawn``: a helper process that imported Django and nixmig once forks a child per
  runner, and the child runs ``execute_from_command_line(["manage.py", ...])`` -- manage.py's
  own body -- with stdout and stderr in files. Same code path, start-up in milliseconds, so the
  kill instants are spent inside the migrations. The helper never opens a database connection,
  so nothing is shared across the fork.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORKSERVER_SRC = r"""
import json, os, sys, time, traceback
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.core.management import execute_from_command_line
import nixmig.api, nixmig.executor, nixmig.sqltext  # noqa: F401  (pglast too)
import nixmig.management.commands.sqlmigrate_up, nixmig.management.commands.sqlmigrate_down  # noqa: F401
reply = os.fdopen(os.dup(1), "w", buffering=1)
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 1)
reply.write('{"ready": true}\n')
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(devnull, 0)
                os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
                os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                try:
                    execute_from_command_line(["manage.py", *req["argv"]])
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        reply.write(json.dumps({"pid": pid}) + "\n")
    elif req["op"] == "wait":
        deadline = time.monotonic() + req["timeout"]
        rc = None
        while True:
            done, status = os.waitpid(req["pid"], os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        reply.write(json.dumps({"rc": rc}) + "\n")
"""


class Runner:
    """One runner process: kill it, wait for it, read what it printed."""

    def __init__(self, pid: int, out: Path, err: Path, waiter, how: str):
        self.pid = pid
        self.out_path, self.err_path = out, err
        self._waiter = waiter
        self.how = how
        self.rc: int | None = None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def poll(self) -> int | None:
        if self.rc is None:
            self.rc = self._waiter(0)
        return self.rc

    def wait(self, timeout: float) -> int | None:
        """Return the exit code (negative: killed by that signal), or None after ``timeout`` seconds."""
        if self.rc is None:
            self.rc = self._waiter(timeout)
        return self.rc

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def spawn_manage(argv: list[str], env: dict, workdir: Path, tag: str) -> Runner:
    out, err = workdir / f"{tag}.out", workdir / f"{tag}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *argv],
            cwd=ROOT,
            env=env,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
        )

    def waiter(timeout: float) -> int | None:
        try:
            return proc.wait(timeout=timeout) if timeout else proc.poll()
        except subprocess.TimeoutExpired:
            return None

    return Runner(proc.pid, out, err, waiter, "manage.py")


class Forkserver:
    """A Python process with Django and nixmig imported that forks runner processes on request."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKSERVER_SRC],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"the fork server did not start:\n{self.proc.stderr.read()}")

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died:\n{self.proc.stderr.read()}")
        return json.loads(line)

    def spawn(self, argv: list[str], workdir: Path, tag: str) -> Runner:
        out, err = workdir / f"{tag}.out", workdir / f"{tag}.err"
        pid = self._ask(op="spawn", argv=argv, stdout=str(out), stderr=str(err))["pid"]
        return Runner(
            pid, out, err, lambda timeout: self._ask(op="wait", pid=pid, timeout=timeout)["rc"], "fork"
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_inprocess(alias: str, command: str, *args: str) -> tuple[int, str, str, str | None]:
    """Run a management command in this process; return (exit code, stdout, stderr, traceback or None).

    A CommandError is what manage.py turns into one 'CommandError: ...' paragraph and exit 1;
    any other exception is what manage.py would print as a traceback.
    """
    import traceback

    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.db import connections

    out, err = io.StringIO(), io.StringIO()
    rc, tb = 0, None
    try:
        call_command(command, *args, "--database", alias, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        rc = exc.returncode
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 -- exactly what the suite counts
        tb = traceback.format_exc()
        err.write(tb)
        rc = 1
    finally:
        connections[alias].close()  # never leave a 'nixmig ...' session open between trials
    return rc, out.getvalue(), err.getvalue(), tb


def one_paragraph_problem(
    stderr: str, *, must_name_file: bool = False, files: tuple[str, ...] = ()
) -> str | None:
    """Return why ``stderr`` of a failed run is not one clear error paragraph, or None when it is."""
    if "Traceback" in stderr:
        return "traceback on stderr"
    errors = [i for i, line in enumerate(stderr.splitlines()) if line.startswith("CommandError:")]
    if len(errors) != 1:
        return f"{len(errors)} 'CommandError:' paragraphs on stderr"
    block = stderr.splitlines()[errors[0] :]
    while block and not block[-1].strip():
        block.pop()
    if any(not line.strip() for line in block):
        return "the error paragraph contains blank lines"
    if len(" ".join(block)) < 40:
        return "the error is too short to say what happened and what to do"
    if must_name_file and not any(f in stderr for f in files):
        return "the error names no file of the tree"
    return None


def wait_backends_gone(conn, timeout: float = 30) -> bool:
    """Wait until no other client backend is connected to this database; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchone()[0]
        if not n:
            return True
        time.sleep(0.01)
    return False


def runner_backend(conn, runner: Runner, timeout: float = 30) -> tuple[int, float] | None:
    """Wait until ``runner`` holds the migration lock (its application_name is set then); return (backend pid, when)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
            [f"nixmig sqlmigrate_% pid={runner.pid} %"],
        ).fetchone()
        if row:
            return row[0], time.monotonic()
        if runner.poll() is not None:
            return None
        time.sleep(0.005)
    return None
