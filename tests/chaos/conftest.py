"""Fixtures of the fault-injection suite: a private cluster, a database on it, runners, figures.

Environment:
- NIXMIG_CHAOS_SEED: replay a run (the seed is printed at the start of every test).
- NIXMIG_CHAOS_TRIALS: scale every trial count (2 = twice the default, 0.2 = a fifth).
- NIXMIG_CHAOS_VERSIONS: server versions to run, e.g. "18" or "15,18" (default both; "none" skips).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import uuid
from pathlib import Path

import pytest
from pgcluster import pg_cluster  # noqa: F401  (the session fixture, parametrized over versions)

from .model import Snapshot, snapshot
from .runners import Forkserver, run_inprocess, spawn_manage, wait_backends_gone

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_FILE = ROOT / "tests" / "artifacts" / "chaos-summary.json"
_SEED = int(os.environ.get("NIXMIG_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))


def trials(default: int) -> int:
    """Return ``default`` scaled by NIXMIG_CHAOS_TRIALS (at least 1)."""
    return max(1, math.ceil(default * float(os.environ.get("NIXMIG_CHAOS_TRIALS") or 1)))


@pytest.fixture(scope="session")
def chaos_summary():
    """Figures per server version and trial kind; written to tests/artifacts/chaos-summary.json at the end."""
    data: dict = {"seed": _SEED, "scale": float(os.environ.get("NIXMIG_CHAOS_TRIALS") or 1), "versions": {}}
    yield data
    if data["versions"]:
        SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
        SUMMARY_FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Figures(dict):
    """Counters of one trial kind on one server version."""

    def __init__(self, kind: str, version: str, seed: int):
        super().__init__(
            kind=kind,
            version=version,
            seed=seed,
            trials=0,
            violations=0,
            tracebacks=0,
            hangs=0,
            unclear_errors=0,
            recovery_failures=0,
            landed={},
            examples=[],
        )
        self.started = time.monotonic()

    def add(self, counter: str, n: int = 1) -> None:
        self[counter] += n

    @contextlib.contextmanager
    def phase(self, name: str):
        """Add the time spent in ``name`` to phase_s (where a trial's seconds go)."""
        started = time.monotonic()
        try:
            yield
        finally:
            phases = self.setdefault("phase_s", {})
            phases[name] = round(phases.get(name, 0) + time.monotonic() - started, 2)

    def landed(self, where: str) -> None:
        self["landed"][where] = self["landed"].get(where, 0) + 1

    def problem(self, counter: str, trial: int, text: str) -> None:
        self[counter] += 1
        if "Traceback" in text:  # the head is Django's frames; the tail says where it broke
            lines = text.splitlines()
            ours = [
                f"{line.strip()} | {lines[i + 1].strip() if i + 1 < len(lines) else ''}"
                for i, line in enumerate(lines)
                if "/nixmig/" in line and line.strip().startswith("File")
            ]
            text = "\n".join(lines[:1] + ["innermost nixmig frames:"] + ours[-3:] + ["..."] + lines[-2:])
        if len(self["examples"]) < 25:
            self["examples"].append(f"[{counter}] trial {trial}: {text[:2000]}")

    @property
    def bad(self) -> int:
        return (
            self["violations"]
            + self["tracebacks"]
            + self["hangs"]
            + self["unclear_errors"]
            + self["recovery_failures"]
        )

    def line(self) -> str:
        self["seconds"] = round(time.monotonic() - self.started, 1)
        landed = ", ".join(f"{k} {v}" for k, v in sorted(self["landed"].items()))
        return (
            f"chaos PG{self['version']} {self['kind']}: {self['trials']} trials, {self['violations']} invariant "
            f"violations, {self['tracebacks']} tracebacks, {self['hangs']} hangs, {self['unclear_errors']} "
            f"unclear errors, {self['recovery_failures']} failed recoveries, {self['seconds']:.1f} s "
            f"(seed {self['seed']}){'; landed: ' + landed if landed else ''}"
        )


class ChaosDB:
    """A database on the private cluster, with a checker connection and ways to start runners."""

    def __init__(self, cluster, workdir: Path, alias: str):
        self.cluster = cluster
        self.name = alias
        self.alias = alias
        self.workdir = workdir
        self.conn = None
        self.windows: dict[str, float] = {}  # seconds of an undisturbed run, measured once per cluster
        self._forkserver: Forkserver | None = None
        self.env = dict(
            os.environ,
            DATABASE_URL=cluster.url(self.name),
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="project.settings",
        )
        self.env.pop("NIXMIG_DB_NAME", None)

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        self.conn = self.cluster.connect(self.name)

    def reset(self) -> None:
        """Drop everything the last trial created (the database itself stays)."""
        self.conn.execute("DROP SCHEMA public CASCADE")
        self.conn.execute("CREATE SCHEMA public")

    def snap(self) -> Snapshot:
        return snapshot(self.conn)

    def spawn(self, argv: list[str], tag: str, how: str = "fork"):
        if how == "manage":
            return spawn_manage(argv, self.env, self.workdir, tag)
        if self._forkserver is None:
            self._forkserver = Forkserver(self.env)
        return self._forkserver.spawn(argv, self.workdir, tag)

    def inprocess(self, command: str, *args: str):
        return run_inprocess(self.alias, command, *args)

    def backends_gone(self, timeout: float = 30) -> bool:
        return wait_backends_gone(self.conn, timeout)

    def close(self) -> None:
        if self._forkserver is not None:
            self._forkserver.close()
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="session")
def chaos_session_db(pg_cluster, tmp_path_factory):  # noqa: F811
    """One database per private cluster (and one fork server for it), shared by the chaos tests."""
    from django.db import connections

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    base = connections["default"].settings_dict
    settings = dict(base, **pg_cluster.django_settings(name), OPTIONS={})
    settings["TEST"] = dict(base.get("TEST") or {}, NAME=name)
    connections.settings[name] = settings
    db = ChaosDB(pg_cluster, tmp_path_factory.mktemp(f"chaos-pg{pg_cluster.version}"), name)
    try:
        yield db
    finally:
        db.close()
        connections[name].close()
        del connections[name]
        del connections.settings[name]
        try:
            with pg_cluster.connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:  # noqa: BLE001 -- the cluster is thrown away at the end anyway
            pass


@pytest.fixture
def chaos_db(chaos_session_db, tmp_path, django_db_blocker):
    """The cluster's chaos database, emptied, reachable in-process (alias = its name) and by runners."""
    from django.db import connections

    db = chaos_session_db
    db.workdir = tmp_path
    with django_db_blocker.unblock():
        db.connect()  # a fresh checker connection: an earlier test may have restarted the server
        db.backends_gone()
        db.reset()
        try:
            yield db
        finally:
            connections[db.alias].close()


@pytest.fixture
def figures(request, pg_cluster, chaos_summary):  # noqa: F811
    """Counters for this test's trial kind; printed and stored when the test ends."""
    kind = request.node.originalname.removeprefix("test_")
    seed = _SEED
    fig = Figures(kind, pg_cluster.version, seed)
    print(
        f"\nchaos seed {seed} (replay: NIXMIG_CHAOS_SEED={seed} NIXMIG_CHAOS_VERSIONS={pg_cluster.version} "
        f".venv/bin/python -m pytest tests/chaos -k {request.node.originalname} -s)",
        file=sys.stderr,
    )
    yield fig
    line = fig.line()
    chaos_summary["versions"].setdefault(pg_cluster.version, {})[kind] = dict(fig)
    print("\n" + line, file=sys.stderr)
    for example in fig["examples"][:10]:
        print("   " + example.replace("\n", "\n     "), file=sys.stderr)


def rng_for(kind: str, version: str, trial: int) -> random.Random:
    """The random source of one trial: the same seed replays the same choices."""
    return random.Random(f"{_SEED}:{kind}:{version}:{trial}")
