#!/usr/bin/env python
"""Benchmark: the cost of status's leftovers query (INVALID and _ccnew/_ccold indexes, pending detaches).

    DATABASE_URL=postgres://... python bench/leftovers.py             # 1,000 tables, 30 rounds
    DATABASE_URL=postgres://... python bench/leftovers.py --tables 5000 --rounds 50

Makes a scratch database with N tables of two indexes each (one of them partitioned, with a
partition) and a tracking table of N rows, then times, alternated in each round, the query that
reads the tracking table (what every status does) and the leftovers query status adds, and
prints their medians and the ratio. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nixmig.leftovers import STATUS_SQL  # noqa: E402

READ_SQL = "SELECT id::bigint, name::text, applied_at::timestamptz, module, checksum, execution_ms FROM migrations ORDER BY id"


def _time(conn, query: str) -> float:
    started = time.perf_counter()
    conn.execute(query).fetchall()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    url = url.replace("postgres://", "postgresql://", 1)
    name = f"nixmig_bench_leftovers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(url, dbname=name, autocommit=True) as conn:
            for first in range(0, args.tables, 500):  # 500 tables per transaction: max_locks_per_transaction
                with conn.transaction():
                    for i in range(first, min(first + 500, args.tables)):
                        conn.execute(
                            f"CREATE TABLE t{i} (id int PRIMARY KEY, v text); CREATE INDEX t{i}_v_idx ON t{i} (v)"
                        )
            with conn.transaction():
                conn.execute("CREATE TABLE ev (at int NOT NULL) PARTITION BY RANGE (at)")
                conn.execute("CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM (0) TO (10)")
                conn.execute(
                    "CREATE TABLE migrations (id BIGSERIAL PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ "
                    "NOT NULL DEFAULT now(), module VARCHAR, checksum VARCHAR(64), execution_ms DOUBLE PRECISION)"
                )
                conn.execute(
                    "INSERT INTO migrations (name, module, checksum) SELECT lpad(g::text, 4, '0') || '_m', 'm', "
                    "md5(g::text) FROM generate_series(1, %s) AS g",
                    [args.tables],
                )
            conn.execute("ANALYZE")
            read, left = [], []
            for r in range(args.rounds + 2):
                pair = [("read", READ_SQL), ("leftovers", STATUS_SQL)]
                if r % 2:
                    pair.reverse()
                times = {label: _time(conn, q) for label, q in pair}
                if r >= 2:  # two warm-up rounds
                    read.append(times["read"])
                    left.append(times["leftovers"])
            version = conn.info.server_version // 10000
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    mr, ml = statistics.median(read), statistics.median(left)
    print(
        f"PostgreSQL {version}, {args.tables} tables ({2 * args.tables} indexes), {args.rounds} rounds: "
        f"tracking-table read {mr:.2f} ms (median), leftovers query {ml:.2f} ms (median), ratio {ml / mr:.2f}"
    )


if __name__ == "__main__":
    main()
