"""Fault injection (issue 9): the tracking table never lies, whatever happens to the runner or the server.

Every trial runs against a private PostgreSQL cluster (tests/pgcluster.py), once per server
version found. After each fault the suite waits until the runner's backend is gone, checks the
invariant of tests/chaos/model.py against the catalog, then checks that the documented
recovery (a plain re-run) ends with every migration applied once with all its effects.

Figures per kind go to stderr (pytest -s) and to tests/artifacts/chaos-summary.json.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.test import override_settings

from .conftest import rng_for, trials
from .model import base_tree, check, final_problems, landed_in, write_tree
from .mutate import mutate
from .runners import one_paragraph_problem, runner_backend

HANG = 60  # seconds a runner may take to end after a fault before it counts as a hang


def _tree(tmp_path, **scale):
    specs = base_tree(**scale)
    return specs, str(write_tree(specs, tmp_path / "migrations_sql"))


def _recover_up(db, specs, tree, fig, trial, label) -> None:
    """The documented recovery: a plain sqlmigrate_up must exit 0 and leave everything applied once."""
    with fig.phase("recovery"):
        rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
    if tb:
        fig.problem("tracebacks", trial, f"{label}: recovery sqlmigrate_up raised:\n{tb}")
    elif rc != 0:
        fig.problem("recovery_failures", trial, f"{label}: recovery sqlmigrate_up exited {rc}:\n{err}")
    problems = final_problems(specs, db.snap())
    if problems and rc == 0:
        fig.problem("violations", trial, f"{label}: after recovery sqlmigrate_up (exit 0): {problems}")


def _calibrate(db, specs, tree, argv) -> float:
    """Run ``argv`` once, undisturbed; return seconds from taking the lock to exit."""
    runner = db.spawn(argv, f"calibrate-{argv[0]}")
    found = runner_backend(db.conn, runner)
    rc = runner.wait(HANG)
    assert rc == 0, f"undisturbed {' '.join(argv)} failed ({rc}):\n{runner.stdout}\n{runner.stderr}"
    assert found is not None
    return time.monotonic() - found[1]


def _windows(db, tree) -> tuple[float, float]:
    """Return the seconds an undisturbed 'up' and 'down --steps 4' take (measured once per cluster)."""
    if not db.windows:
        db.windows["up"] = _calibrate(db, None, tree, ["sqlmigrate_up", "--dir", tree])
        db.windows["down"] = _calibrate(db, None, tree, ["sqlmigrate_down", "--steps", "4", "--dir", tree])
        db.reset()
    return db.windows["up"], db.windows["down"]


def _kill_at_random(db, runner, window, rng, fig, trial, label):
    """Kill -9 ``runner`` at a random instant after it took the lock; record where the kill landed."""
    with fig.phase("runner start-up"):
        found = runner_backend(db.conn, runner)
    if found is None:
        fig.landed(f"{label}: ended before it was seen")
        return
    backend, _ = found
    time.sleep(rng.uniform(0, window))
    if runner.poll() is not None:
        fig.landed(f"{label}: finished before the kill")
        return
    runner.kill()
    row = db.conn.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone()
    number = landed_in(row[1]) if row and row[0] == "active" else None
    if number:  # which migration's statement was running: the kills should spread over the whole tree
        where = fig.setdefault("killed_in_migration", {})
        where[f"{label} {number}"] = where.get(f"{label} {number}", 0) + 1
    if row and row[0] == "active" and "CONCURRENTLY" in (row[1] or "").upper():
        fig.landed(f"{label}: during {_concurrent_kind(row[1])}")
    elif row and row[0] == "active" and landed_in(row[1]):
        fig.landed(f"{label}: inside a statement")
    else:
        fig.landed(f"{label}: between statements")
    with fig.phase("killed runner exit"):
        rc = runner.wait(HANG)
    if rc is None:
        fig.problem("hangs", trial, f"{label}: killed runner pid {runner.pid} did not end")


def _concurrent_kind(query: str) -> str:
    """Name the kind of a CONCURRENTLY statement (for where the faults landed)."""
    q = " ".join(query.upper().split())
    for kind in ("REINDEX", "DETACH PARTITION", "DROP INDEX"):
        if kind in q:
            return f"{kind} ... CONCURRENTLY"
    unnamed = "INDEX CONCURRENTLY ON" in q
    return f"CREATE INDEX CONCURRENTLY{' (unnamed)' if unnamed else ''}"


def _after_fault(db, specs, fig, trial, label) -> bool:
    """Wait for the runner's backend to end, then check the invariant. Return False on a hang."""
    with fig.phase("waiting for backends to end"):
        gone = db.backends_gone(HANG)
    if not gone:
        rows = db.conn.execute(
            "SELECT pid, application_name, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        fig.problem("hangs", trial, f"{label}: backends still there after {HANG} s: {rows}")
        return False
    with fig.phase("invariant check"):
        snap = db.snap()
        problems = check(specs, snap)
    for p in snap.progress:
        fig.landed(
            f"{label}: left a partly {'applied' if p['direction'] == 'up' else 'rolled back'} migration"
        )
        if p["in_flight"]:
            fig.landed(f"{label}: left a CONCURRENTLY statement in flight")
    if any(valid is False for valid in snap.objects.values()):
        fig.landed(f"{label}: left an INVALID index")
    if problems:
        fig.problem(
            "violations", trial, f"{label}: {problems}; records={snap.records}; progress={snap.progress}"
        )
    return True


def test_kill_up_and_down(chaos_db, figures, tmp_path):
    """kill -9 of sqlmigrate_up at random instants, then of sqlmigrate_down --steps 4; recover each time.

    Each cycle: empty database -> kill an up run -> invariant -> recovery (sqlmigrate_up) ->
    everything applied -> kill a 'down --steps 4' run -> invariant -> recovery: finish a partly
    rolled-back migration with 'sqlmigrate_down --steps 1', then sqlmigrate_up -> everything applied.
    Every tenth runner is a real 'python manage.py' process, the others are forked (see runners.py).
    """
    db, fig = chaos_db, figures
    specs, tree = _tree(tmp_path)
    up, down = ["sqlmigrate_up", "--dir", tree], ["sqlmigrate_down", "--steps", "4", "--dir", tree]
    with fig.phase("calibration"):
        up_window, down_window = _windows(db, tree)
    fig["window_s"] = {"up": round(up_window, 2), "down_steps_4": round(down_window, 2)}
    for trial in range(trials(30)):
        rng = rng_for("kill", fig["version"], trial)
        how = "manage" if trial % 10 == 0 else "fork"
        with fig.phase("reset"):
            db.reset()
        fig.add("trials")
        fig["up_trials"] = fig.get("up_trials", 0) + 1
        with fig.phase("spawn"):
            runner = db.spawn(up, f"up-{trial}", how)
        _kill_at_random(db, runner, up_window * 1.05, rng, fig, trial, "up")
        if not _after_fault(db, specs, fig, trial, "up"):
            continue
        _recover_up(db, specs, tree, fig, trial, "up")
        if final_problems(specs, db.snap()):
            continue  # already counted; the down half needs a fully applied database
        fig.add("trials")
        fig["down_trials"] = fig.get("down_trials", 0) + 1
        with fig.phase("spawn"):
            runner = db.spawn(down, f"down-{trial}", how)
        _kill_at_random(db, runner, down_window * 1.05, rng, fig, trial, "down")
        if not _after_fault(db, specs, fig, trial, "down"):
            continue
        if any(p["direction"] == "down" for p in db.snap().progress):
            rc, out, err, tb = db.inprocess("sqlmigrate_down", "--steps", "1", "--dir", tree)
            if tb or rc != 0:
                fig.problem(
                    "tracebacks" if tb else "recovery_failures",
                    trial,
                    f"down: finishing the partly rolled-back migration exited {rc}:\n{tb or err}",
                )
            else:
                problems = check(specs, db.snap())
                if problems or db.snap().progress:
                    fig.problem(
                        "violations",
                        trial,
                        f"down: after 'sqlmigrate_down --steps 1': {problems}, progress {db.snap().progress}",
                    )
        _recover_up(db, specs, tree, fig, trial, "down")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


def test_terminate_backend(chaos_db, figures, tmp_path):
    """pg_terminate_backend of the runner's connection: exit 1, one paragraph, no traceback; invariant; re-run.

    Every fifth runner is a real 'python manage.py' process, the others are forked (see runners.py).
    """
    db, fig = chaos_db, figures
    specs, tree = _tree(tmp_path)
    up = ["sqlmigrate_up", "--dir", tree]
    window = _windows(db, tree)[0]
    for trial in range(trials(10)):
        rng = rng_for("terminate", fig["version"], trial)
        db.reset()
        fig.add("trials")
        with fig.phase("runner start-up"):
            runner = db.spawn(up, f"term-{trial}", "manage" if trial % 5 == 0 else "fork")
            found = runner_backend(db.conn, runner)
        if found is None:
            fig.landed("ended before it was seen")
        else:
            time.sleep(rng.uniform(0, window))
            still_running = runner.poll() is None
            hit = db.conn.execute("SELECT pg_terminate_backend(%s)", [found[0]]).fetchone()[0]
            fig.landed(
                "terminated while running" if hit and still_running else "finished before the terminate"
            )
        with fig.phase("terminated runner exit"):
            rc = runner.wait(HANG)
        if rc is None:
            runner.kill()
            fig.problem("hangs", trial, f"runner did not end within {HANG} s after pg_terminate_backend")
            continue
        if rc == 0:
            if final_problems(specs, db.snap()):
                fig.problem(
                    "violations",
                    trial,
                    f"exit 0 but not everything applied: {final_problems(specs, db.snap())}",
                )
        else:
            why = one_paragraph_problem(runner.stderr)
            if rc != 1 or why:
                counter = "tracebacks" if "Traceback" in runner.stderr else "unclear_errors"
                fig.problem(counter, trial, f"exit {rc}, {why}:\n{runner.stderr}")
        if _after_fault(db, specs, fig, trial, "terminate"):
            _recover_up(db, specs, tree, fig, trial, "terminate")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


def test_immediate_restart(chaos_db, figures, tmp_path):
    """pg_ctl restart -m immediate during a run: non-zero exit without a traceback; invariant; re-run."""
    db, fig = chaos_db, figures
    specs, tree = _tree(tmp_path)
    up = ["sqlmigrate_up", "--dir", tree]
    window = _windows(db, tree)[0]
    for trial in range(trials(3)):
        rng = rng_for("restart", fig["version"], trial)
        db.reset()
        fig.add("trials")
        with fig.phase("runner start-up"):
            runner = db.spawn(up, f"restart-{trial}", "manage")
            found = runner_backend(db.conn, runner)
        time.sleep(rng.uniform(0.1, 0.9) * window)
        still_running = runner.poll() is None
        db.conn.close()
        with fig.phase("restart"):
            db.cluster.restart_immediate()
            db.cluster.wait_ready()
        db.connect()
        fig.landed("restarted while running" if found and still_running else "finished before the restart")
        with fig.phase("runner exit"):
            rc = runner.wait(HANG)
        if rc is None:
            runner.kill()
            fig.problem("hangs", trial, f"runner did not end within {HANG} s after the restart")
        elif "Traceback" in runner.stderr:
            fig.problem("tracebacks", trial, runner.stderr)
        elif rc == 0 and still_running and final_problems(specs, db.snap()):
            fig.problem(
                "violations", trial, f"exit 0 but not everything applied: {final_problems(specs, db.snap())}"
            )
        elif rc != 0 and one_paragraph_problem(runner.stderr):
            fig.problem(
                "unclear_errors",
                trial,
                f"exit {rc}, {one_paragraph_problem(runner.stderr)}:\n{runner.stderr}",
            )
        if _after_fault(db, specs, fig, trial, "restart"):
            _recover_up(db, specs, tree, fig, trial, "restart")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


def test_twelve_runners_at_once(chaos_db, figures, tmp_path):
    """12 runners of sqlmigrate_up started together on an empty database (tree with CIC): all exit 0.

    Forked, so they start within milliseconds of each other (12 'python manage.py' start-ups on
    this 2-core machine would spread over seconds and mostly find the work done).
    """
    db, fig = chaos_db, figures
    specs, tree = _tree(tmp_path)
    for trial in range(trials(1)):
        db.reset()
        fig.add("trials")
        runners = [db.spawn(["sqlmigrate_up", "--dir", tree], f"many-{trial}-{i}") for i in range(12)]
        codes = [r.wait(180) for r in runners]
        for r, rc in zip(runners, codes, strict=True):
            if rc is None:
                r.kill()
                fig.problem("hangs", trial, f"runner pid {r.pid} still running after 180 s")
            elif "Traceback" in r.stderr:
                fig.problem("tracebacks", trial, r.stderr)
            elif rc != 0:
                fig.problem("recovery_failures", trial, f"runner exited {rc}:\n{r.stderr}")
        fig.landed(
            f"runners that applied something: "
            f"{sum(1 for r in runners if 'No migrations to apply' not in r.stdout)}"
        )
        if _after_fault(db, specs, fig, trial, "12 runners"):
            problems = final_problems(specs, db.snap())
            if problems:
                fig.problem("violations", trial, f"after 12 runners: {problems}")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


def test_mutated_trees(chaos_db, figures, tmp_path):
    """100+ seeded mutations of the tree: each applies, or is refused with one clear paragraph, nothing half-applied.

    In-process (call_command), except the first three, which run as real 'python manage.py' processes.
    """
    db, fig = chaos_db, figures
    files = set()
    for trial in range(trials(100) + 3):
        rng = rng_for("mutate", fig["version"], trial)
        specs = base_tree(pad=0, rows=300)
        root = write_tree(specs, tmp_path / f"tree{trial}")
        descriptions, touched = mutate(root, specs, rng)
        files = tuple(p.name for p in root.rglob("*") if p.is_file()) + tuple(
            p.name for p in root.iterdir() if p.is_dir()
        )
        db.reset()
        fig.add("trials")
        label = "; ".join(descriptions) or "no mutation"
        if trial < 3:
            runner = db.spawn(["sqlmigrate_up", "--dir", str(root)], f"mut-{trial}", "manage")
            rc = runner.wait(HANG)
            err, tb = runner.stderr, "Traceback" in runner.stderr
            if rc is None:
                runner.kill()
                fig.problem("hangs", trial, f"{label}: runner did not end")
                continue
        else:
            rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", str(root))
        if tb:
            fig.problem("tracebacks", trial, f"{label}:\n{err}")
        elif rc == 0:
            fig.landed("applied")
            snap = db.snap()
            missing = [
                s.id
                for s in specs
                if (root / s.module / f"{s.name}_up.sql").exists() and snap.records.get(s.id, 0) != 1
            ]
            if missing or snap.progress:
                fig.problem(
                    "violations",
                    trial,
                    f"{label}: exit 0 but not applied once: {missing}, progress {snap.progress}",
                )
        else:
            why = one_paragraph_problem(err, must_name_file=True, files=files)
            if rc != 1 or why:
                fig.problem("unclear_errors", trial, f"{label}: exit {rc}, {why}:\n{err}")
            snap = db.snap()
            fig.landed("refused, nothing applied" if not snap.records else "failed after applying some")
            samples = fig.setdefault("samples", [])
            if len(samples) < 12 and not why:
                samples.append(f"{label} -> {err.strip().splitlines()[-1][:400]}")
        if not db.backends_gone(HANG):
            fig.problem("hangs", trial, f"{label}: backends left behind")
            continue
        problems = check(specs, db.snap(), unknown=frozenset(touched))
        if problems:
            fig.problem("violations", trial, f"{label}: {problems}")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


class _Blocker(threading.Thread):
    """A session that, once ``table`` exists, holds a conflicting lock on it for ``hold`` seconds."""

    def __init__(self, db, table: str, sql: str, hold: float):
        super().__init__(daemon=True)
        self.db, self.table, self.sql, self.hold = db, table, sql, hold
        self.took: float | None = None  # seconds after start when it held the lock
        self.error: str | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            with self.db.cluster.connect(self.db.name, application_name="chaos-blocker") as conn:
                while conn.execute("SELECT to_regclass(%s)", [self.table]).fetchone()[0] is None:
                    if time.monotonic() - started > HANG:
                        return
                    time.sleep(0.002)
                conn.execute("BEGIN")
                conn.execute(self.sql)
                self.took = time.monotonic() - started
                time.sleep(self.hold)
                conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 -- reported as a problem of the trial
            self.error = repr(exc)


BLOCKERS = [
    (
        "t_11_1",
        "INSERT INTO t_11_1 (id) VALUES (0)",
    ),  # a writer: CREATE/REINDEX INDEX CONCURRENTLY wait for it
    ("t_11_3", "SELECT count(*) FROM t_11_3"),  # a reader of the parent: DETACH ... CONCURRENTLY waits for it
]


def test_lock_blocker(chaos_db, figures, tmp_path):
    """A session holds a conflicting lock longer than the lock timeout while 011's concurrent statements run.

    The runner (in-process, LOCK_TIMEOUT 200 ms, 2 retries) either outlasts the blocker through its
    retries or stops with one lock-timeout paragraph; the invariant holds either way (no INVALID index
    of a recorded migration, no _ccnew/_ccold index, no partition pending detach, except the one
    statement in flight), and a plain re-run once the blocker is gone applies everything once.
    """
    db, fig = chaos_db, figures
    specs, tree = _tree(tmp_path)
    for trial in range(trials(12)):
        rng = rng_for("blocker", fig["version"], trial)
        table, sql = rng.choice(BLOCKERS)
        hold = rng.uniform(0.2, 5.0)
        with fig.phase("reset"):
            db.reset()
        fig.add("trials")
        blocker = _Blocker(db, table, sql, hold)
        blocker.start()
        with fig.phase("run"), override_settings(NIXMIG={"LOCK_TIMEOUT": "200ms", "LOCK_RETRIES": 2}):
            rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
        blocker.join(HANG)
        label = f"{table} held {hold:.1f} s"
        if blocker.is_alive() or blocker.error:
            fig.problem("hangs", trial, f"{label}: blocker {blocker.error or 'did not end'}")
            continue
        if tb:
            fig.problem("tracebacks", trial, f"{label}:\n{tb}")
        elif rc == 0:
            fig.landed(f"{'writer' if table == 't_11_1' else 'reader'}: outlasted through retries")
        else:
            why = one_paragraph_problem(err)
            if rc != 1 or why:
                fig.problem("unclear_errors", trial, f"{label}: exit {rc}, {why}:\n{err}")
            fig.landed(f"{'writer' if table == 't_11_1' else 'reader'}: stopped at a lock timeout")
            if "Fix the SQL" in err:
                fig.problem("unclear_errors", trial, f"{label}: a lock timeout told to fix the SQL:\n{err}")
        if "removed " in err:
            fig.landed("removed what an attempt left")
        if not _after_fault(db, specs, fig, trial, "blocker"):
            continue
        _recover_up(db, specs, tree, fig, trial, "blocker")
    assert fig.bad == 0, fig.line() + "\n" + "\n".join(fig["examples"])


@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant_checker_catches_lies(chaos_db, tmp_path, k):
    """The checker is not a check that can't fail: a record without effects, or effects without a record, are caught."""
    db = chaos_db
    specs, tree = _tree(tmp_path, pad=0, rows=100)
    rc, out, err, tb = db.inprocess("sqlmigrate_up", "--dir", tree)
    assert (rc, tb) == (0, None), err
    assert check(specs, db.snap()) == [] and final_problems(specs, db.snap()) == []
    # A lie of each kind, made by hand:
    db.conn.execute("DROP FUNCTION f_08_6()")  # recorded, effect missing
    db.conn.execute("DELETE FROM migrations WHERE name = '005_tx'")  # effects present, not recorded
    if k == 0:  # recorded twice (the unique index would refuse it, so it goes first)
        db.conn.execute("DROP INDEX migrations_module_name_key")
        db.conn.execute("INSERT INTO migrations (name, module) VALUES ('001_base', 'core')")
    if k:
        db.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations_progress (module VARCHAR NOT NULL, name VARCHAR NOT NULL, "
            "direction VARCHAR(4) NOT NULL, checksum VARCHAR(64) NOT NULL, statements_done INTEGER NOT NULL, "
            "statement_hashes TEXT[] NOT NULL, total INTEGER NOT NULL, error TEXT, updated_at TIMESTAMPTZ NOT NULL "
            "DEFAULT now(), PRIMARY KEY (module, name, direction))"
        )
        db.conn.execute("DELETE FROM migrations WHERE name = '002_nt_tables'")
        db.conn.execute(
            "INSERT INTO migrations_progress VALUES ('core', '002_nt_tables', 'up', 'x', %s, '{}', 6)", [k]
        )
    problems = " | ".join(check(specs, db.snap()))
    assert "audit/008_nt_multi (recorded): missing: func:f_08_6" in problems
    assert "teams/005_tx (not recorded): present but should not be: table:t_05_1, table:t_05_3" in problems
    if k == 0:
        assert "core/001_base: recorded 2 times" in problems
    if k == 1:  # statements 3 (t_02_3) .. 6 ran beyond the recorded progress of 1
        assert "core/002_nt_tables (not recorded, up progress 1/6): present but should not be" in problems
    if k == 3:
        assert "core/002_nt_tables (not recorded, up progress 3/6): present but should not be" in problems
    # A REINDEX CONCURRENTLY leftover on a recorded migration's table:
    db.conn.execute("CREATE INDEX i_11_2_ccnew ON t_11_1 (w)")
    assert "ops/011_notx_kinds (recorded): unexpected objects: index:i_11_2_ccnew" in " | ".join(
        check(specs, db.snap())
    )
