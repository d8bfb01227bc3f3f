#!/usr/bin/env python
"""Benchmark (issue 12): how long creating a test database with the SQL schema takes.

    python bench/testdb.py                    # N = 14, 520, 2000; 3 rounds (about 4 minutes on 2 cores)
    python bench/testdb.py --n 14 2000 --runs 7

For every N the synthetic tree of bench/generate.py (five statements per migration: a
table, an index, a plpgsql function, a trigger, two rows) is the project's SQL tree, and
these are timed in this process (no interpreter start-up), side by side:

* ``first``: Django's ``create_test_db`` when no template exists (the first test run: Django's
  migrations, every SQL migration, then the copy into the template ``<name>_nixmig_<hash>``);
* ``second``: ``create_test_db`` when the template exists and a spare copy is ready (every
  later run, every xdist worker, once the previous run's background copy has finished):
  the empty test database is replaced by renaming the spare;
* ``second, copy``: the same with ``NIXMIG['TEST_SPARES'] = 0`` and no spare: the copy
  (``CREATE DATABASE ... TEMPLATE``) is made while the test run waits;
* ``background``: how long the background copy of a spare took (copy plus snapshot check;
  it runs while the tests run, not before them);
* ``no template``: ``create_test_db`` with ``NIXMIG['TEST_TEMPLATE'] = False`` (Django's
  migrations and ``sqlmigrate_up`` into the fresh test database, every run);
* ``sqlmigrate_up``: ``api.migrate_up`` into an empty database made from template0 (the
  baseline the issue names: plain sqlmigrate_up, without Django's migrations).

Rounds alternate the measurements (in rotating order, for every N) and medians are
printed, with ratios against ``sqlmigrate_up`` at the same N and ``second`` at N against
``second`` at the smallest N. ``first`` is measured once per N (a one-off by design).
Results also go to bench/results/testdb.json.
The database is the project's: DATABASE_URL when set, otherwise the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.generate import generate  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, nargs="+", default=[14, 520, 2000])
    parser.add_argument("--runs", type=int, default=3, help="rounds of the repeated measurements (default 3)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    from nixmig import api, testing

    connection = connections["default"]
    server = connection.settings_dict
    trees = {n: generate(n, RESULTS / "trees" / str(n)) / "nixmig" for n in args.n}
    base_nixmig = dict(settings.NIXMIG)

    def configure(n: int, *, template: bool = True, spares: int = 1) -> None:
        settings.NIXMIG = {
            **base_nixmig,
            "MIGRATIONS_DIR": str(trees[n]),
            "TEST_APPLY": True,
            "TEST_TEMPLATE": template,
            "TEST_SPARES": spares,
        }
        server.setdefault("TEST", {})["NAME"] = f"bench_testdb_{n}"

    def create_test_db(n: int, *, template: bool = True, spares: int = 1) -> float:
        """Time Django's create_test_db (as both test runners call it)."""
        testing.wait_for_spares()  # the previous run's background copy is done (not timed)
        if not spares:
            drop_templates(n, spares_only=True)
        configure(n, template=template, spares=spares)
        old_name = server["NAME"]
        started = time.perf_counter()
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        seconds = time.perf_counter() - started
        with connection.cursor() as cursor:  # the schema really is there: N tables + N records
            cursor.execute(
                "SELECT (SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bench_%%'), "
                "(SELECT count(*) FROM migrations)"
            )
            tables, records = cursor.fetchone()
        assert (tables, records) == (n, n), (n, tables, records)
        connection.creation.destroy_test_db(old_name, verbosity=0)
        return seconds

    def background(n: int) -> float:
        """Time one background copy of a spare (its own thread; the measurement joins it)."""
        testing.wait_for_spares()
        testing.spare_seconds.clear()
        create_test_db(n)  # takes a spare and starts a new copy
        testing.wait_for_spares()
        assert len(testing.spare_seconds) == 1, testing.spare_seconds
        return testing.spare_seconds[0]

    def drop_templates(n: int, *, spares_only: bool = False) -> None:
        testing.wait_for_spares()
        with connection._nodb_cursor() as cursor:
            prefix = testing.template_prefix(f"bench_testdb_{n}")
            cursor.execute(
                "SELECT datname FROM pg_database WHERE left(datname, length(%s)) = %s", [prefix, prefix]
            )
            for (name,) in cursor.fetchall():
                if not spares_only or name[len(prefix) + testing.HASH_LENGTH :]:
                    cursor.execute(f'DROP DATABASE "{name}"')

    def sqlmigrate_up(n: int) -> float:
        configure(n)
        name = f"bench_testdb_up_{n}"
        with connection._nodb_cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        connections.settings["bench_up"] = {**server, "NAME": name}
        try:
            tree = api.load_tree(trees[n])  # what sqlmigrate_up reads, inside the timing
            started = time.perf_counter()
            result = api.migrate_up(database="bench_up", tree=api.load_tree(trees[n]))
            seconds = time.perf_counter() - started
            assert len(result.done) == n == len(tree.migrations)
        finally:
            connections["bench_up"].close()
            del connections["bench_up"]
            del connections.settings["bench_up"]
            with connection._nodb_cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        return seconds

    labels = ("first", "second", "second, copy", "background", "no template", "sqlmigrate_up")
    times: dict[str, dict[int, list[float]]] = {k: {n: [] for n in args.n} for k in labels}
    for n in args.n:
        drop_templates(n)
        times["first"][n].append(create_test_db(n))
        print(f"N={n}: first run (template built) {times['first'][n][0]:.3f} s", flush=True)

    jobs = [
        ("second", create_test_db),
        ("second, copy", lambda n: create_test_db(n, spares=0)),
        ("background", background),
        ("no template", lambda n: create_test_db(n, template=False)),
        ("sqlmigrate_up", sqlmigrate_up),
    ]
    for round_ in range(args.runs):
        order = jobs[round_ % len(jobs) :] + jobs[: round_ % len(jobs)]
        for n in args.n:
            for label, job in order:
                times[label][n].append(job(n))
        print(f"round {round_ + 1}/{args.runs} done", flush=True)

    for n in args.n:
        drop_templates(n)

    medians = {label: {n: statistics.median(v) for n, v in by_n.items()} for label, by_n in times.items()}
    smallest = min(args.n)
    version = connection.cursor().connection.info.server_version
    print(
        f"\nTest-database creation, PostgreSQL {version // 10000}.{version % 10000 // 100 if version < 100000 else version % 10000}"
        f", medians of {args.runs} rounds (first: one run), seconds; {os.cpu_count()} cores, {platform.python_version()}"
    )
    header = (
        f"{'N':>6}  {'first':>8}  {'second':>8}  {'second, copy':>12}  {'background':>10}  "
        f"{'no template':>11}  {'sqlmigrate_up':>13}  {'second/up':>9}  {'second/second@' + str(smallest):>16}"
    )
    print(header)
    for n in args.n:
        m = {label: medians[label][n] for label in medians}
        print(
            f"{n:>6}  {m['first']:>8.3f}  {m['second']:>8.3f}  {m['second, copy']:>12.3f}  {m['background']:>10.3f}  "
            f"{m['no template']:>11.3f}  {m['sqlmigrate_up']:>13.3f}  {m['second'] / m['sqlmigrate_up']:>9.3f}  "
            f"{m['second'] / medians['second'][smallest]:>16.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "testdb.json").write_text(
        json.dumps(
            {"server_version": version, "runs": args.runs, "times": times, "medians": medians}, indent=1
        )
    )


if __name__ == "__main__":
    main()
