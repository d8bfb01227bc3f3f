"""Rollouts on Celery workers (--executor celery): real `celery worker` processes, a real broker, real PostgreSQL.

The broker is RabbitMQ at 127.0.0.1:5672 when it answers (it hands a dead worker's task to another
at once), else Redis at 127.0.0.1:6379 (with a short visibility timeout); the tests skip when
neither does. Workers run the demo project's Celery app (project/celery.py) on queues named for
this run, and are stopped by their pid.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, ScratchDB, _url
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

pytest.importorskip("celery", reason="Celery is an optional extra: pip install 'nixmig[celery]'")

RUN = uuid.uuid4().hex[:8]
QA, QB = f"nixmig-t{RUN}-a", f"nixmig-t{RUN}-b"


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def _broker() -> str | None:
    if _answers(5672):
        return "amqp://guest:guest@127.0.0.1:5672//"
    if _answers(6379):
        return "redis://127.0.0.1:6379/0"
    return None


BROKER = _broker()
pytestmark = pytest.mark.skipif(
    BROKER is None, reason="no broker: neither RabbitMQ (5672) nor Redis (6379) answers"
)
VISIBILITY = 2  # seconds: how long Redis keeps a dead worker's task before handing it on


# -- workers ---------------------------------------------------------------------------------------


class Worker:
    """One `celery worker` process of the demo project, stopped by its pid."""

    def __init__(
        self, name: str, queues: list[str], cwd: Path = ROOT, concurrency: int = 2, broker: str | None = None
    ):
        server = connections["default"].settings_dict
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="project.settings",
            DATABASE_URL=_url(server, server["NAME"]),
            CELERY_BROKER_URL=broker or BROKER,
            CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        self.node = f"{name}-{RUN}@{socket.gethostname()}"
        self.log = Path(f"/tmp/nixmig-celery-{RUN}-{name}.log")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-Q",
                ",".join(queues),
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-n",
                f"{name}-{RUN}@%h",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "info",
            ],
            cwd=cwd,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 180) -> Worker:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if " ready." in self.log.read_text(errors="replace"):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def app():
    from project.celery import app

    app.conf.broker_url = BROKER
    app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY}
    yield app
    with app.connection_for_write() as connection:  # the broker keeps durable queues: remove this run's
        channel = connection.default_channel
        for suffix in ("a", "b", "kill", "old"):
            channel.queue_delete(f"nixmig-t{RUN}-{suffix}")


@pytest.fixture(scope="module")
def workers(app, django_db_blocker):
    """Two workers: one takes both queues, the other only the second."""
    with django_db_blocker.unblock():
        started = [Worker("w1", [QA, QB]), Worker("w2", [QB])]
    try:
        yield [w.wait_ready() for w in started]
    finally:
        for w in started:
            w.stop()


# -- the tree and the targets ----------------------------------------------------------------------


@pytest.fixture
def tenant_tree(tree):
    """Three migrations; a schema with a table 'fail_here' makes the second fail, 'slow_here' makes it slow."""
    tree.pair(
        "auth/001_create_users",
        "CREATE TABLE users (id serial PRIMARY KEY, name text);\n",
        "DROP TABLE users;\n",
    )
    tree.pair(
        "orgs/002_create_orgs",
        "SELECT pg_sleep(CASE WHEN to_regclass('slow_here') IS NULL THEN 0.05 ELSE 3 END);\n"
        "DO $$ BEGIN IF to_regclass('fail_here') IS NOT NULL THEN RAISE EXCEPTION 'this tenant refuses'; "
        "END IF; END $$;\n"
        "CREATE TABLE orgs (id serial PRIMARY KEY, owner int REFERENCES users);\n",
        "DROP TABLE orgs;\n",
    )
    tree.pair(
        "auth/003_create_tokens",
        "CREATE TABLE tokens (id serial PRIMARY KEY, user_id int REFERENCES users);\n"
        "INSERT INTO public.tenant_log (tenant) VALUES (current_schema());\n",
        "DROP TABLE tokens;\nDELETE FROM public.tenant_log WHERE tenant = current_schema();\n",
    )
    return tree


def make_schemas(db: ScratchDB, count: int) -> list[str]:
    names = [f"tenant_{i:04d}" for i in range(1, count + 1)]
    db.sql(
        "CREATE TABLE IF NOT EXISTS public.tenant_log (tenant text NOT NULL); "
        + " ".join(f'CREATE SCHEMA "{n}";' for n in names)
    )
    return names


def targets_file(
    tmp_path: Path, db: ScratchDB, schemas: list[str], queue=lambda i, s: QA if i % 2 else QB, **marks
):
    lines = []
    for i, s in enumerate(schemas):
        extra = " [canary]" if s in marks.get("canaries", ()) else ""
        lines.append(f"{db.url} {s} [queue={queue(i, s)}]{extra}")
    path = tmp_path / f"targets-{uuid.uuid4().hex[:6]}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(command: str, **options) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, stdout=out, stderr=err, executor="celery", **options)
        rc = 0
    except CommandError as exc:
        err.write(str(exc))
        rc = exc.returncode
    return out.getvalue(), err.getvalue(), rc


def recorded(db: ScratchDB, schema: str) -> list[str]:
    if not db.value("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".migrations']):
        return []
    return [f"{m}/{n}" for m, n in db.sql(f'SELECT module, name FROM "{schema}".migrations ORDER BY id')]


def assert_true_records(db: ScratchDB, schemas: list[str]) -> None:
    """Every recorded migration's table exists and every table's migration is recorded; 003 ran once per tenant."""
    tables: dict[str, set[str]] = {}
    for schema, table in db.sql(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname LIKE 'tenant\\_%'"
    ):
        tables.setdefault(schema, set()).add(table)
    by_table = {
        "users": "auth/001_create_users",
        "orgs": "orgs/002_create_orgs",
        "tokens": "auth/003_create_tokens",
    }
    logged = dict(db.sql("SELECT tenant, count(*) FROM public.tenant_log GROUP BY tenant"))
    for schema in schemas:
        present = sorted(mid for table, mid in by_table.items() if table in tables.get(schema, set()))
        assert sorted(recorded(db, schema)) == present, schema
        assert logged.get(schema, 0) == (1 if "auth/003_create_tokens" in present else 0), schema


def report_rows(path: Path) -> dict[str, dict]:
    return {row["target"]: row for row in json.loads(path.read_text())["targets"]}


# -- a rollout ------------------------------------------------------------------------------------


def test_50_schemas_and_10_databases_roll_out_on_two_workers_and_two_queues(
    scratch_db, tenant_tree, tmp_path, workers, django_db_blocker
):
    schemas = make_schemas(scratch_db, 50)
    dbs = []
    admin = connections["default"]
    try:
        with admin.cursor() as cursor:
            for i in range(10):
                name = f"nixmig_c_{RUN}_{i}"
                cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                dbs.append(name)
        base = admin.settings_dict
        urls = [_url(base, name) for name in dbs]
        for url in urls:
            import psycopg

            with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as c:
                c.execute("CREATE TABLE tenant_log (tenant text NOT NULL)")
        path = targets_file(tmp_path, scratch_db, schemas)
        with path.open("a") as f:
            f.writelines(f"{url} [queue={QB}]\n" for url in urls)
        report = tmp_path / "report.json"
        out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path), report=str(report))
        assert rc == 0, err
        counts = re.findall(r"^\[(\d+)/60\] ", out, flags=re.M)
        assert [int(n) for n in counts] == list(range(1, 61))  # a live count of finished targets
        assert "Summary: 60 target(s): 60 done, 0 up to date, 0 failed, 0 skipped" in out
        assert_true_records(scratch_db, schemas)
        assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
        rows = report_rows(report)
        data = json.loads(report.read_text())
        assert data["executor"] == "celery" and data["counts"]["done"] == 60 and data["stopped"] is None
        assert {row["status"] for row in rows.values()} == {"done"}
        assert all(len(row["applied"]) == 3 and row["deliveries"] == 1 for row in rows.values())
        # Each target went to its queue: the first queue's targets only to the worker that takes it.
        w1 = {row["worker"] for row in rows.values() if row["queue"] == QA}
        assert w1 == {workers[0].node}
        assert {row["worker"].split("-")[0] for row in rows.values() if row["queue"] == QB} <= {"w1", "w2"}
        for url in urls:  # database targets: the tracking table in public, three records
            import psycopg

            with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as c:
                assert c.execute("SELECT count(*) FROM migrations").fetchone()[0] == 3
        # Status on the workers agrees, and a second rollout has nothing to do.
        out, err, rc = run("sqlmigrate_status", dir=str(tenant_tree), targets_file=str(path), check=True)
        assert rc == 0, err
        assert "Summary: 60 target(s): 0 not up to date, 60 up to date, 0 failed" in out
        out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path))
        assert rc == 0 and "60 target(s): 0 done, 60 up to date" in out, err
    finally:
        with admin.cursor() as cursor:
            for name in dbs:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_failing_tenant_with_stop_revokes_the_rest_and_only_failed_finishes_it(
    scratch_db, tenant_tree, tmp_path, workers
):
    schemas = make_schemas(scratch_db, 30)
    scratch_db.sql("CREATE TABLE tenant_0001.fail_here (); CREATE TABLE tenant_0002.slow_here ()")
    path = targets_file(tmp_path, scratch_db, schemas, queue=lambda i, s: QB)
    report = tmp_path / "report.json"
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path), report=str(report))
    assert rc == 1
    assert "Stopping: " in err and "tenant_0001 failed" in err
    rows = report_rows(report)
    by_status: dict[str, list[str]] = {}
    for key, row in rows.items():
        by_status.setdefault(row["status"], []).append(key.split()[-1])
    assert by_status["failed"] == ["tenant_0001"]
    assert "this tenant refuses" in rows[f"{scratch_db.url} tenant_0001"]["error"]["message"]
    assert rows[f"{scratch_db.url} tenant_0001"]["error"]["migration"] == "orgs/002_create_orgs"
    revoked = by_status.get("not_started", [])
    assert revoked, "with a slow tenant holding a worker, some targets were still queued at the failure"
    assert all(
        rows[f"{scratch_db.url} {s}"]["reason"].startswith("revoked before it started") for s in revoked
    )
    assert all(recorded(scratch_db, s) == [] for s in revoked)  # not started means untouched
    assert recorded(scratch_db, "tenant_0001") == ["auth/001_create_users"]
    assert_true_records(scratch_db, schemas)
    # Fixed, the failed and the revoked targets run again, and only they.
    scratch_db.sql("DROP TABLE tenant_0001.fail_here")
    again = tmp_path / "again.json"
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), only_failed=str(report), report=str(again))
    assert rc == 0, err
    assert f"{1 + len(revoked)} target(s): {1 + len(revoked)} done" in out
    assert {row["queue"] for row in report_rows(again).values()} == {QB}  # the report kept their queue
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
    assert_true_records(scratch_db, schemas)


def test_a_failing_tenant_with_continue_leaves_the_others_done(scratch_db, tenant_tree, tmp_path, workers):
    schemas = make_schemas(scratch_db, 12)
    scratch_db.sql("CREATE TABLE tenant_0005.fail_here ()")
    path = targets_file(tmp_path, scratch_db, schemas)
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path), on_error="continue")
    assert rc == 1
    assert "1 of 12 target(s) failed" in err and "The others are done" in err
    assert "12 target(s): 11 done, 0 up to date, 1 failed" in out
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas if s != "tenant_0005")
    assert_true_records(scratch_db, schemas)


def test_a_failing_canary_stops_the_rollout_before_anything_else_is_dispatched(
    scratch_db, tenant_tree, tmp_path, workers
):
    schemas = make_schemas(scratch_db, 10)
    scratch_db.sql("CREATE TABLE tenant_0008.fail_here ()")
    path = targets_file(tmp_path, scratch_db, schemas, canaries=("tenant_0003", "tenant_0008"))
    report = tmp_path / "report.json"
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path), report=str(report))
    assert rc == 1 and "A canary failed" in err
    assert "Canary: 2 target(s) first." in out
    rows = report_rows(report)
    assert sorted(r["status"] for r in rows.values()) == ["done"] + ["failed"] + ["not_started"] * 8
    assert all("task_id" not in r for r in rows.values() if r["status"] == "not_started")  # never dispatched
    assert [s for s in schemas if recorded(scratch_db, s)] == ["tenant_0003", "tenant_0008"]
    assert_true_records(scratch_db, schemas)


def test_a_broker_that_is_down_is_one_paragraph_before_anything_is_dispatched(
    scratch_db, tenant_tree, tmp_path, app
):
    schemas = make_schemas(scratch_db, 3)
    path = targets_file(tmp_path, scratch_db, schemas)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
    try:
        out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path))
    finally:
        app.conf.broker_url = url
    assert rc == 1
    assert err.startswith(f"Can't reach the Celery broker at redis://127.0.0.1:{port}/0 (")
    assert "nothing was dispatched and no target was touched" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert all(recorded(scratch_db, s) == [] for s in schemas) and out == ""


# -- faults ---------------------------------------------------------------------------------------


def _worker_running(db: ScratchDB, workers: list[Worker], timeout: float = 90) -> Worker:
    """Return the worker whose connection is migrating a target of ``db`` (its pid is in application_name)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for (name,) in db.sql(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE '%%pg_sleep%%' AND state = 'active' AND application_name LIKE 'nixmig %%' "
            "AND now() - query_start > interval '0.3 s'"
        ):
            pid = int(re.search(r"pid=(\d+)", name).group(1))
            for w in workers:
                if w.pid == pid:
                    return w
        time.sleep(0.05)
    raise AssertionError("no worker was running the slow target")


def _coordinator(db: ScratchDB, tree, targets: Path, report: Path, **env: str) -> subprocess.Popen:
    """Start 'manage.py sqlmigrate_up --executor celery' over a targets file, writing a report, as a process."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "sqlmigrate_up",
            "--executor",
            "celery",
            "--dir",
            str(tree),
            "--targets-file",
            str(targets),
            "--report",
            str(report),
        ],
        cwd=ROOT,
        env=dict(db.env(), CELERY_BROKER_URL=BROKER, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_killed_mid_target_has_it_redelivered_and_nothing_applied_twice(
    scratch_db, tenant_tree, tmp_path, app
):
    schemas = make_schemas(scratch_db, 8)
    scratch_db.sql("CREATE TABLE tenant_0004.slow_here ()")
    queue = f"nixmig-t{RUN}-kill"
    path = targets_file(tmp_path, scratch_db, schemas, queue=lambda i, s: queue)
    report = tmp_path / "report.json"
    started = [Worker("k1", [queue], concurrency=1), Worker("k2", [queue], concurrency=1)]
    try:
        for w in started:
            w.wait_ready()
        coordinator = _coordinator(
            scratch_db, tenant_tree, path, report, CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY)
        )
        victim = _worker_running(scratch_db, started)
        os.kill(victim.pid, signal.SIGKILL)  # mid-migration: its transaction is rolled back with its record
        victim.process.wait(10)
        out, err = coordinator.communicate(timeout=60)
        assert coordinator.returncode == 0, err
        assert "8 target(s): 8 done, 0 up to date, 0 failed" in out
        row = report_rows(report)[f"{scratch_db.url} tenant_0004"]
        assert row["status"] == "done" and row["redelivered"] is True and row["deliveries"] == 2
        assert row["worker"] != victim.node  # finished by the other worker
        assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
        assert_true_records(scratch_db, schemas)  # 003's insert ran once per tenant
    finally:
        for w in started:
            w.stop()


def test_a_killed_coordinator_leaves_a_partial_report_that_resume_completes(
    scratch_db, tenant_tree, tmp_path, workers
):
    schemas = make_schemas(scratch_db, 10)
    scratch_db.sql("CREATE TABLE tenant_0002.slow_here ()")
    path = targets_file(tmp_path, scratch_db, schemas)
    report = tmp_path / "report.json"
    coordinator = _coordinator(scratch_db, tenant_tree, path, report)
    try:
        _worker_running(scratch_db, workers)  # tasks are dispatched and the slow one runs
    finally:
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(10)
    partial = json.loads(report.read_text())  # written atomically: always valid JSON
    assert partial["executor"] == "celery" and partial["stopped"] is None
    assert all(row.get("task_id") for row in partial["targets"])
    assert any(row["status"] in ("running", "not_started") for row in partial["targets"])
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), resume=str(report))
    assert rc == 0, err
    assert "10 target(s): 10 done, 0 up to date, 0 failed" in out
    assert {row["status"] for row in report_rows(report).values()} == {"done"}
    assert all(len(recorded(scratch_db, s)) == 3 for s in schemas)
    assert_true_records(scratch_db, schemas)


def test_a_worker_with_another_tree_refuses_its_targets(scratch_db, tenant_tree, tmp_path, monkeypatch, app):
    schemas = make_schemas(scratch_db, 2)
    queue = f"nixmig-t{RUN}-old"
    here, there = tmp_path / "coordinator", tmp_path / "worker"
    for side in (here, there):
        (side / "tree" / "auth").mkdir(parents=True)
        (side / "tree" / "auth" / "001_create_users_up.sql").write_text("CREATE TABLE users (id int);\n")
    (there / "tree" / "auth" / "001_create_users_up.sql").write_text("CREATE TABLE users (id bigint);\n")
    path = targets_file(tmp_path, scratch_db, schemas, queue=lambda i, s: queue)
    worker = Worker("old", [queue], cwd=there)
    try:
        worker.wait_ready()
        monkeypatch.chdir(here)  # the same --dir, as given, is another tree on the worker
        out, err, rc = run("sqlmigrate_up", dir="tree", targets_file=str(path), on_error="continue")
    finally:
        worker.stop()
    assert rc == 1
    assert "2 target(s): 0 done, 0 up to date, 2 failed" in out
    assert "is not the one the coordinator planned with" in err and "Nothing was run there" in err
    assert all(recorded(scratch_db, s) == [] for s in schemas)


def test_down_and_lint_run_on_the_workers_too(scratch_db, tenant_tree, tmp_path, workers):
    schemas = make_schemas(scratch_db, 4)
    path = targets_file(tmp_path, scratch_db, schemas)
    out, err, rc = run("sqlmigrate_lint", dir=str(tenant_tree), targets_file=str(path))
    assert rc == 0, err
    assert "Summary: 4 target(s): " in out and "0 failed" in out
    out, err, rc = run("sqlmigrate_up", dir=str(tenant_tree), targets_file=str(path))
    assert rc == 0, err
    out, err, rc = run("sqlmigrate_down", dir=str(tenant_tree), targets_file=str(path), steps=1)
    assert rc == 0, err
    assert "4 target(s): 4 rolled back" in out
    assert all(recorded(scratch_db, s) == ["auth/001_create_users", "orgs/002_create_orgs"] for s in schemas)
    assert_true_records(scratch_db, schemas)
