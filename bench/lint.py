#!/usr/bin/env python
"""What linting costs (issue 11), measured side by side in one run, as ratios of medians.

    python bench/lint.py                 # N = 520 generated migrations, 5 up runs and 11 start-up runs each
    python bench/lint.py --n 520 --up-runs 7 --runs 15

* up: ``sqlmigrate_up`` of N migrations on a fresh empty database, with lint (the default) and
  with ``--no-lint``, alternating which goes first each round. Goal: lint adds at most 10 %.
* start-up: ``sqlmigrate_lint --all`` on the N files (no database) against ``manage.py version``
  (Django's start-up, the floor every command pays), alternating. Goal: at most 1.2x.
* in-process: the linter's own time on the N files (``lint_tree`` as ``--all`` runs it, and
  ``lint_entries`` as the plan check of ``sqlmigrate_up`` runs it), median of several calls.

The trees come from bench/generate.py (each migration creates a table with an index, a plpgsql
trigger and two rows). The database is the project's: DATABASE_URL when set, otherwise the
embedded PostgreSQL. Processes use bench/run.py's environment (bench.settings, DEBUG off).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import generate  # noqa: E402
from bench.run import RESULTS, Server, child_env  # noqa: E402

DB = "nmb_lint_up"


def fresh(admin, name: str) -> None:
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, CPU seconds of the child, exit code)."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    return seconds, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench_up(server: Server, tree: Path, n: int, runs: int, logs: Path) -> dict[str, list[float]]:
    admin = server.connect()
    py, manage = sys.executable, str(ROOT / "manage.py")
    cmds = {
        "lint": [py, manage, "sqlmigrate_up", "--dir", str(tree)],
        "no-lint": [py, manage, "sqlmigrate_up", "--no-lint", "--dir", str(tree)],
    }
    env = child_env(server, DB, tree.parent)
    times: dict[str, list[float]] = {k: [] for k in [*cmds, *(c + " cpu" for c in cmds)]}
    for r in range(runs):
        order = list(cmds) if r % 2 == 0 else list(cmds)[::-1]
        for mode in order:
            fresh(admin, DB)
            seconds, cpu, rc = timed(cmds[mode], env, logs / f"up-{mode}.log")
            if rc != 0:
                sys.exit(f"sqlmigrate_up ({mode}) failed; see {logs / f'up-{mode}.log'}")
            with server.connect(DB) as conn:
                records = conn.execute("SELECT count(*) FROM migrations").fetchone()[0]
            if records != n:
                sys.exit(f"sqlmigrate_up ({mode}) recorded {records} of {n} migrations")
            times[mode].append(seconds)
            times[mode + " cpu"].append(cpu)
            print(f"  up round {r + 1}/{runs} {mode:<8} {seconds:6.2f} s wall, {cpu:5.2f} s CPU", flush=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    return times


def bench_startup(server: Server, tree: Path, runs: int, logs: Path) -> dict[str, list[float]]:
    py, manage = sys.executable, str(ROOT / "manage.py")
    cmds = {
        "lint --all": [py, manage, "sqlmigrate_lint", "--all", "--dir", str(tree)],
        "version": [py, manage, "version"],
        "lint --rules": [py, manage, "sqlmigrate_lint", "--rules"],
    }  # the command without tree or parser
    env = child_env(server, "postgres", tree.parent)
    times: dict[str, list[float]] = {k: [] for k in [*cmds, *(c + " cpu" for c in cmds)]}
    for r in range(runs + 1):
        order = list(cmds)[r % len(cmds) :] + list(cmds)[: r % len(cmds)]  # rotate who goes first
        for name in order:
            seconds, cpu, rc = timed(cmds[name], env, logs / f"{name.replace(' ', '').replace('-', '')}.log")
            if rc != 0:
                sys.exit(f"{name} failed; see the log in {logs}")
            if r:  # the first round warms the file cache and .pyc files
                times[name].append(seconds)
                times[name + " cpu"].append(cpu)
    return times


def bench_in_process(tree: Path, runs: int) -> dict[str, list[float]]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    django.setup()
    from nixmig import lint
    from nixmig.plan import resolve
    from nixmig.tree import load_tree

    loaded = load_tree(tree)
    entries = resolve(loaded, []).pending
    settings = lint.Settings.from_django()
    times: dict[str, list[float]] = {"lint_tree (--all)": [], "lint_entries (up's plan check, no db)": []}
    for _ in range(runs):
        started = time.perf_counter()
        report = lint.lint_tree(loaded, settings=settings)
        times["lint_tree (--all)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        plan = lint.lint_entries(entries, settings=settings)
        times["lint_entries (up's plan check, no db)"].append(time.perf_counter() - started)
    assert not report.errors and not plan.errors, (report.errors[:3], plan.errors[:3])
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=520, help="generated migrations (default 520)")
    parser.add_argument("--up-runs", type=int, default=5, help="up runs per mode (default 5)")
    parser.add_argument("--runs", type=int, default=11, help="start-up runs per command (default 11)")
    parser.add_argument("--only", choices=("startup", "up"), help="measure only this part")
    args = parser.parse_args(argv)

    root = RESULTS / "trees" / str(args.n)
    generate(args.n, root)
    tree = root / "nixmig"
    logs = RESULTS / "lint-logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = Server()
    print(f"nixmig lint benchmark: N={args.n}, PostgreSQL {server.version()}")
    inproc = bench_in_process(tree, args.runs)
    startup = bench_startup(server, tree, args.runs, logs) if args.only != "up" else None
    up = bench_up(server, tree, args.n, args.up_runs, logs) if args.only != "startup" else None

    print(f"\nIn process, N={args.n} files (median of {args.runs}):")
    for name, values in inproc.items():
        print(f"  {name:<40} {median_ms(values):8.1f} ms")
    if startup:
        report_startup(startup, args)
    if up:
        report_up(up, args)


def report_startup(startup, args) -> None:
    print(f"\nStart-up (median of {args.runs}, whole processes):")
    for name, values in startup.items():
        print(f"  {name:<40} {median_ms(values):8.1f} ms")
    for kind in ("", " cpu"):
        ratio = statistics.median(startup["lint --all" + kind]) / statistics.median(startup["version" + kind])
        print(
            f"  sqlmigrate_lint --all / manage.py version{' (CPU)' if kind else ' (wall)'} = {ratio:.2f}x "
            "(goal <= 1.20x)"
        )


def report_up(up, args) -> None:
    print(f"\nsqlmigrate_up of {args.n} migrations on a fresh database (median of {args.up_runs}):")
    for name, values in up.items():
        print(f"  {name:<40} {median_ms(values):8.1f} ms")
    for kind in ("", " cpu"):
        ratio = statistics.median(up["lint" + kind]) / statistics.median(up["no-lint" + kind])
        print(
            f"  with lint / --no-lint{' (CPU)' if kind else ' (wall)'} = {ratio:.3f} "
            f"({(ratio - 1) * 100:+.1f} %, goal <= +10 %)"
        )


if __name__ == "__main__":
    main()
