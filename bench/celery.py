"""Thousands of tenants: the thread executor against the Celery executor, side by side.

    python bench/celery.py [--tenants 1000] [--rounds 1] [--parallel 8] [--workers 2] [--concurrency 4]
                           [--broker redis://127.0.0.1:6379/0]

Per round, in alternating order, each executor gets a fresh database with N empty schemas
(bench/tenants.py's setup) and applies the 14-migration sample (migrations_sql/) to every
schema with ``manage.py sqlmigrate_up --schemas-from "SELECT ..."``:

- threads: ``--parallel P`` (default 8) in the coordinator's process;
- celery: ``--executor celery`` with W workers (default 2) of C prefork processes each
  (default 4), started once for the bench on a queue of its own.

Printed per executor, medians over the rounds: wall time of the command (process start
included), targets per second, the peak number of connections to the server (sampled
every 10 ms from pg_stat_activity), the coordinator's CPU time per target, and for
Celery the bytes that crossed a Redis broker per target (its INFO counters, so every
message: tasks, replies, acknowledgements, the revoke channel). Each run is checked:
every schema must hold the same tables (19 from the 14 migrations).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = uuid.uuid4().hex[:6]
# Run as a script, this file's folder comes first on sys.path, where its name would hide the celery package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.tenants import (  # noqa: E402
    DB,
    EXPECTED_TABLES,
    SCHEMAS,
    TREE,
    check,
    fresh,
    server,
    tables_per_schema,
    url,
)


class Peak:
    """Sample the number of client connections to the bench database until stopped."""

    def __init__(self, settings: dict):
        import psycopg

        self.conn = psycopg.connect(url(settings, "postgres"), autocommit=True)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            n = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                [DB],
            ).fetchone()[0]
            self.peak = max(self.peak, n)
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


def broker_bytes(broker: str) -> int | None:
    """Return the bytes a Redis broker has received and sent so far (None for another broker)."""
    if not broker.startswith("redis://"):
        return None
    import redis

    info = redis.Redis.from_url(broker).info("stats")
    return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])


def env_for(settings: dict, broker: str, queue: str) -> dict:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=url(settings, DB).replace("postgresql://", "postgres://", 1),
        CELERY_BROKER_URL=broker,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )


def coordinator(settings: dict, broker: str, queue: str, *args: str) -> tuple[float, float, str]:
    """Run sqlmigrate_up over the schemas; return (wall seconds, coordinator CPU seconds, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "sqlmigrate_up",
            "--dir",
            str(TREE),
            "--schemas-from",
            SCHEMAS,
            *args,
        ],
        cwd=ROOT,
        env=env_for(settings, broker, queue),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"sqlmigrate_up {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def start_workers(
    settings: dict, broker: str, queue: str, count: int, concurrency: int, logs: Path, workers: list
) -> None:
    for n in range(count):
        log = logs / f"worker-{n}.log"
        workers.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "project",
                        "worker",
                        "-Q",
                        queue,
                        "-c",
                        str(concurrency),
                        "-n",
                        f"bench{n}-{RUN}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "-l",
                        "warning",
                        "--prefetch-multiplier",
                        "1",
                    ],
                    cwd=ROOT,
                    env=env_for(settings, broker, queue),
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    from project.celery import app

    app.conf.broker_url = broker
    deadline = time.monotonic() + 120
    names = [f"bench{n}-{RUN}@{socket.gethostname()}" for n in range(count)]
    while len(app.control.ping(destination=names, timeout=1.0)) < count:  # all are consuming
        if any(proc.poll() is not None for proc, _ in workers) or time.monotonic() > deadline:
            raise SystemExit(
                "a worker did not start:\n" + "\n".join(log.read_text()[-2000:] for _, log in workers)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    # A Redis database of its own: the workers take the default queue (nixmig) there.
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    settings = server()
    from nixmig.tree import load_tree

    assert len(load_tree(TREE).migrations) == 14
    queue = "nixmig"  # NIXMIG['ROLLOUT']['QUEUE']'s default
    logs = Path(tempfile.mkdtemp(prefix="nixmig-bench-celery-"))
    fresh(settings, 1)  # the database the workers' default alias names
    runs: dict[str, list[dict]] = {"threads": [], "celery": []}
    celery_args = ("--executor", "celery")
    workers: list = []
    try:
        start_workers(settings, args.broker, queue, args.workers, args.concurrency, logs, workers)
        for r in range(args.rounds):
            order = ["threads", "celery"] if r % 2 == 0 else ["celery", "threads"]
            for name in order:
                fresh(settings, args.tenants)
                extra = ("--parallel", str(args.parallel)) if name == "threads" else celery_args
                before = broker_bytes(args.broker) if name == "celery" else None
                with Peak(settings) as peak:
                    wall, cpu, out = coordinator(settings, args.broker, queue, *extra)
                after = broker_bytes(args.broker) if name == "celery" else None
                if not EXPECTED_TABLES[0]:  # the first run says how many tables the tree makes per schema
                    EXPECTED_TABLES[0] = max(tables_per_schema(settings))
                check(settings, args.tenants, name)
                assert f"{args.tenants} done" in out, out[-500:]
                runs[name].append(
                    {
                        "wall": wall,
                        "cpu": cpu,
                        "peak": peak.peak,
                        "bytes": None if before is None or after is None else after - before,
                    }
                )
                print(f"round {r + 1} {name:8} {wall:7.1f} s  peak {peak.peak} connection(s)", flush=True)
    finally:
        for proc, _ in workers:
            os.kill(proc.pid, signal.SIGTERM)
        for proc, _ in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    n = args.tenants
    print()
    print(
        f"{n} schema targets, 14 migrations each, {args.rounds} round(s), medians; host {socket.gethostname()}, "
        f"{os.cpu_count()} CPU(s); broker {args.broker.split('://')[0]}"
    )
    print(f"{'executor':34} {'wall s':>8} {'targets/s':>10} {'peak conns':>11} {'coord. CPU ms/target':>21}")
    labels = {
        "threads": f"threads --parallel {args.parallel}",
        "celery": f"celery {args.workers} workers x {args.concurrency}",
    }
    for name in ("threads", "celery"):
        wall = med(name, "wall")
        print(
            f"{labels[name]:34} {wall:8.1f} {n / wall:10.1f} {med(name, 'peak'):11.0f} "
            f"{1000 * med(name, 'cpu') / n:21.2f}"
        )
    ratio = med("threads", "wall") / med("celery", "wall")
    print(f"celery / threads throughput: {ratio:.2f}x")
    if runs["celery"][0]["bytes"] is not None:
        print(
            f"broker traffic per target (celery): {statistics.median(r['bytes'] for r in runs['celery']) / n:.0f} bytes"
        )


if __name__ == "__main__":
    main()
