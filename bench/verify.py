#!/usr/bin/env python
"""Benchmark sqlmigrate_verify against one sqlmigrate_up of the same tree, side by side.

    python bench/verify.py                 # N = 520 generated migrations, 3 rounds (a few minutes)
    python bench/verify.py --n 100 --rounds 5

The tree is bench/generate.py's (each migration: a table, an index, a plpgsql trigger function,
its trigger and two rows; its down drops them). Every round times two whole processes on
fresh databases, in alternating order: ``manage.py sqlmigrate_up`` (apply the tree once) and
``manage.py sqlmigrate_verify --json`` (up, down, up again per migration, three schema
snapshots each, in a scratch database it creates and drops). It prints the medians, the ratio
verify / up (the issue's goal: at most 3x; running each up twice and each down once makes
about 3x the floor), and, from verify's own JSON report, the snapshot time per migration and
per snapshot. The database server is the project's: DATABASE_URL when set, else the embedded
PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from bench.generate import generate  # noqa: E402


def env_for(database: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urlsplit(url)
        env["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + database))
    else:
        env["NIXMIG_DB_NAME"] = database
    return env


def run(args: list[str], database: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env_for(database),
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=520, help="migrations in the generated tree (default 520)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of (up, verify), alternating (default 3)"
    )
    options = parser.parse_args()

    import django

    django.setup()
    from django.db import connections

    tree = generate(options.n, ROOT / "bench" / "results" / "verify" / f"trees-{options.n}") / "nixmig"
    admin = connections["default"]

    def fresh() -> str:
        name = f"nmbv_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def drop(name: str) -> None:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    times = {"up": [], "verify": []}
    reports = []
    for round_no in range(options.rounds):
        order = ["up", "verify"] if round_no % 2 == 0 else ["verify", "up"]
        for tool in order:
            database = fresh()
            try:
                if tool == "up":
                    seconds, done = run(["sqlmigrate_up", "--dir", str(tree), "-v", "0"], database)
                else:
                    seconds, done = run(
                        ["sqlmigrate_verify", "--dir", str(tree), "--json", "-v", "0"], database
                    )
                if done.returncode != 0:
                    sys.exit(f"{tool} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                if tool == "verify":
                    report = json.loads(done.stdout)
                    assert report["counts"]["exact"] == options.n, report["summary"]
                    reports.append(report)
            finally:
                drop(database)
            times[tool].append(seconds)
            print(f"round {round_no + 1}: {tool:6} {seconds:7.2f} s", flush=True)

    up, verify = statistics.median(times["up"]), statistics.median(times["verify"])
    snapshot_s = statistics.median(r["snapshots"]["seconds"] for r in reports)
    snapshots = reports[0]["snapshots"]["count"]
    inside = statistics.median(r["seconds"] for r in reports)
    print()
    print(
        f"N = {options.n} migrations, {options.rounds} rounds, medians of whole processes "
        f"(Django start-up included in both):"
    )
    print(f"  sqlmigrate_up (apply once)      {up:7.2f} s")
    print(f"  sqlmigrate_verify (up/down/up)  {verify:7.2f} s   ratio verify / up = {verify / up:.2f}x")
    print(
        f"  verify's own run time           {inside:7.2f} s, of which snapshots {snapshot_s:.2f} s "
        f"({snapshots} snapshots)"
    )
    print(
        f"  snapshot time per migration     {1000 * snapshot_s / options.n:7.1f} ms "
        f"({1000 * snapshot_s / snapshots:.1f} ms per snapshot)"
    )


if __name__ == "__main__":
    main()
