#!/usr/bin/env python
"""Benchmark sqlmigrate_verify against one sqlmigrate_up of the same tree, side by side.

    python bench/verify.py                    # N = 520 generated migrations, 3 rounds
    python bench/verify.py --n 100 --rounds 5
    python bench/verify.py --real hatchet     # a real tree of ../shared/corpora/realworld, imported

The generated tree is bench/generate.py's (each migration: a table, an index, a plpgsql trigger
function, its trigger and two rows; its down drops them). ``--real NAME`` imports a real tree
instead (``sqlmigrate_import``, not timed), up to its first migration that is not SQL (a Go
migration nixmig can't run), so that ``sqlmigrate_up`` applies all of it.

Every round times two whole processes on fresh databases, in alternating order:
``manage.py sqlmigrate_up`` (apply the tree once) and ``manage.py sqlmigrate_verify --json``
(up, down, up again per migration, with schema snapshots, in a scratch database it creates and
drops). It prints the medians, the median of the per-round ratios verify / up (the goal: at most
3x; running each up twice and each down once is about 3x already), and verify's own figures from
its JSON report.

Then, in this process, it times schema snapshots against the migration steps they follow, side
by side: with the first N - K migrations applied it runs K round trips (up, down, up again)
in one session, unlinted as in verify, taking an incremental snapshot after each step, and
prints the median of each (``--snapshot-k``, default 40; 0 skips it). The database server is the project's:
DATABASE_URL when set, else the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

REALWORLD = ROOT.parent / "shared" / "corpora" / "realworld"
TOOLS = {"hatchet": "goose", "openfga": "goose", "harbor": "golang-migrate", "kratos": "popx"}
RESULTS = ROOT / "bench" / "results" / "verify"


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


def import_real(name: str) -> Path:
    """Import the real tree ``name`` up to its first migration that is not SQL; return the nixmig tree."""
    source = REALWORLD / name
    if not source.is_dir():
        sys.exit(f"{source} is not there: --real needs ../shared/corpora/realworld/{name}.")
    copy, out = RESULTS / f"{name}-source", RESULTS / name
    for folder in (copy, out):
        shutil.rmtree(folder, ignore_errors=True)
    copy.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.suffix != ".sql":
            break  # a Go migration: what follows may depend on it
        shutil.copy(path, copy / path.name)
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "sqlmigrate_import", str(copy), "--from", TOOLS[name]]
        + ["--dir", str(out), "--module", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"importing {name} failed:\n{done.stderr[-2000:]}")
    return out


def snapshots_side_by_side(tree_dir: Path, k: int) -> dict[str, float]:
    """Median of a migration step and of the incremental snapshot after it, at the tree's size."""
    from django.db import connections

    from nixmig import api, lint, snapshot

    admin = connections["default"]
    name = f"nmbs_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    connections.settings[name] = dict(admin.settings_dict, NAME=name)
    steps: list[float] = []
    snaps: list[float] = []
    try:
        tree = api.load_tree(tree_dir)
        ids = [m.id for m in tree.migrations]
        k = min(k, len(ids) - 1)
        connection = connections[name]
        with lint.skipped(), api.session(name, tree=tree) as s:  # verify does not lint either
            s.up(to=ids[len(ids) - k - 1])
            previous = snapshot.take(connection, row_counts=True)
            for mid in ids[len(ids) - k :]:
                for step in (lambda: s.up(to=mid), s.down, lambda: s.up(to=mid)):  # noqa: B023
                    started = time.perf_counter()
                    step()
                    steps.append(time.perf_counter() - started)
                    previous = snapshot.take(connection, row_counts=True, previous=previous)
                    snaps.append(previous.seconds)
        tables = len(previous.names("table"))
    finally:
        connections[name].close()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "tables": tables,
        "count": len(snaps),
        "step_ms": 1000 * statistics.median(steps),
        "snapshot_ms": 1000 * statistics.median(snaps),
        "snapshot_max_ms": 1000 * max(snaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=520, help="migrations in the generated tree (default 520)")
    parser.add_argument("--real", choices=sorted(TOOLS), help="use this real tree instead, imported")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of (up, verify), alternating (default 3)"
    )
    parser.add_argument(
        "--snapshot-k", type=int, default=40, help="round trips timed for the snapshot figures (0: none)"
    )
    options = parser.parse_args()

    import django

    django.setup()
    from django.db import connections

    if options.real:
        tree = import_real(options.real)
        label = f"{options.real} (real tree, imported)"
    else:
        tree = generate(options.n, RESULTS / f"trees-{options.n}") / "nixmig"
        label = "generated"
    admin = connections["default"]

    def fresh() -> str:
        name = f"nmbv_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def drop(name: str) -> None:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    times: dict[str, list[float]] = {"up": [], "verify": []}
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
                if tool == "up" and done.returncode != 0:
                    sys.exit(f"up failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                if tool == "verify":
                    try:
                        report = json.loads(done.stdout)
                    except ValueError:
                        sys.exit(f"verify failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                    if not options.real:
                        assert report["counts"]["exact"] == options.n, report["summary"]
                    reports.append(report)
            finally:
                drop(database)
            times[tool].append(seconds)
            print(f"round {round_no + 1}: {tool:6} {seconds:7.2f} s", flush=True)

    up, verify = statistics.median(times["up"]), statistics.median(times["verify"])
    paired = statistics.median(v / u for v, u in zip(times["verify"], times["up"], strict=True))
    snapshot_s = statistics.median(r["snapshots"]["seconds"] for r in reports)
    snapshots = reports[0]["snapshots"]["count"]
    inside = statistics.median(r["seconds"] for r in reports)
    count = len(reports[0]["migrations"]) if "migrations" in reports[0] else options.n
    print()
    print(
        f"{label} tree, {count} migrations, {options.rounds} rounds, medians of whole processes "
        f"(Django start-up included in both):"
    )
    print(f"  sqlmigrate_up (apply once)      {up:7.2f} s")
    print(
        f"  sqlmigrate_verify (up/down/up)  {verify:7.2f} s   ratio verify / up = {verify / up:.2f}x "
        f"(median of the rounds' own ratios {paired:.2f}x)"
    )
    print(f"  verify's results                {reports[0]['counts']}")
    print(
        f"  verify's own run time           {inside:7.2f} s, of which snapshots {snapshot_s:.2f} s "
        f"({snapshots} snapshots, {1000 * snapshot_s / max(snapshots, 1):.1f} ms each on average)"
    )
    if options.snapshot_k:
        side = snapshots_side_by_side(tree, options.snapshot_k)
        print(
            f"  side by side at {side['tables']} tables ({side['count']} steps): one migration step "
            f"{side['step_ms']:.1f} ms, the incremental snapshot after it {side['snapshot_ms']:.1f} ms "
            f"(medians; slowest snapshot {side['snapshot_max_ms']:.1f} ms)"
        )


if __name__ == "__main__":
    main()
