"""Django integration on a real PostgreSQL: startup apply, RUN_WITH_MIGRATE, checks, several databases,
signals, --sql, progress and summary."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, ScratchDB
from django.core.checks import WARNING, Warning
from django.db import connections

from nixmig import signals
from nixmig.checks import check_sql_migrations
from nixmig.startup import apply_on_startup, get_asgi_application

DEADLINE = 60  # seconds: only a bound against hanging, never a measurement

WORKER = """
import io
from project.wsgi import application
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/admin/login/", "SERVER_NAME": "testserver",
           "SERVER_PORT": "80", "HTTP_HOST": "testserver", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http"}
statuses = []
b"".join(application(environ, lambda status, headers, exc_info=None: statuses.append(status)))
print("served", statuses[0])
"""


@pytest.fixture
def three(tree):
    tree.table_pair("auth/001_create_users", "users")
    tree.table_pair("orgs/002_create_orgs", "orgs")
    tree.table_pair("auth/003_create_tokens", "tokens")
    return tree


@pytest.fixture
def use_tree(settings):
    """Point NIXMIG['MIGRATIONS_DIR'] (and any other NIXMIG keys) at a test's tree."""

    def use(tree, **extra):
        settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path), **extra}

    return use


@pytest.fixture
def more_dbs(django_db_blocker):
    """Make further fresh databases beside ``scratch_db``: ``more_dbs(2)`` returns two ScratchDBs."""
    made: list[ScratchDB] = []

    def make(count: int) -> list[ScratchDB]:
        with django_db_blocker.unblock():
            base = connections["default"].settings_dict
            for _ in range(count):
                name = f"nixmig_t_{uuid.uuid4().hex[:12]}"
                with connections["default"].cursor() as cursor:
                    cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                settings = dict(base, NAME=name, TEST=dict(base.get("TEST") or {}, NAME=name))
                connections.settings[name] = settings
                made.append(ScratchDB(name, name, settings))
        return made[-count:]

    with django_db_blocker.unblock():
        yield make
        for db in made:
            connections[db.alias].close()
            del connections[db.alias]
            del connections.settings[db.alias]
            with connections["default"].cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- startup apply ---------------------------------------------------------------------------


def lock_key(db: ScratchDB) -> int:
    return db.value("SELECT hashtextextended('nixmig:migrations:' || current_database(), 0)")


def wait_for(condition, what: str):
    give_up = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def start_worker(db: ScratchDB, tree):
    env = db.env(
        DJANGO_SETTINGS_MODULE="settings_startup",
        NIXMIG_TEST_MIGRATIONS_DIR=str(tree.path),
        PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
    )
    return subprocess.Popen(
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_workers_starting_at_once_serialise_on_the_lock_and_apply_each_migration_once(scratch_db, three):
    key = lock_key(scratch_db)
    scratch_db.sql("SELECT pg_advisory_lock(%s)", [key])  # hold the lock until every worker queues behind it
    workers = [start_worker(scratch_db, three) for _ in range(3)]
    try:
        # Each has tried the lock once and failed (its last query is the try or the holder look-up after it).
        wait_for(
            lambda: (
                scratch_db.value(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'nixmig sqlmigrate_up %%' "
                    "AND (query LIKE '%%pg_try_advisory_lock%%' OR query LIKE '%%pg_locks%%')"
                )
                == 3
            ),
            "three workers waiting for the lock",
        )
        scratch_db.sql("SELECT pg_advisory_unlock(%s)", [key])
        results = [(w.wait(timeout=DEADLINE), *w.communicate(timeout=DEADLINE)) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for rc, out, err in results:
        assert rc == 0, err
        assert out == "served 200 OK\n"
        assert "Waiting for the migration lock, held by pid" in err
    applying = [line for _, _, err in results for line in err.splitlines() if "Applying" in line]
    assert sorted(re.sub(r"\(\d+ ms\)", "(n ms)", line) for line in applying) == [
        "  [1/3] Applying auth/001_create_users... OK (n ms)",
        "  [2/3] Applying orgs/002_create_orgs... OK (n ms)",
        "  [3/3] Applying auth/003_create_tokens... OK (n ms)",
    ]
    assert scratch_db.records() == [
        ("auth", "001_create_users"),
        ("orgs", "002_create_orgs"),
        ("auth", "003_create_tokens"),
    ]


def test_a_failing_migration_stops_startup_with_the_commands_error(scratch_db, tree):
    tree.table_pair("app/001_first", "first_t")
    tree.pair("app/002_broken", "CREATE TABLE second_t (id int);\nSELECT * FROM nope;\n", "")
    worker = start_worker(scratch_db, tree)
    out, err = worker.communicate(timeout=DEADLINE)
    assert worker.returncode != 0
    assert out == ""  # it never served
    path = tree.path / "app" / "002_broken_up.sql"
    message = (
        f'Applying app/002_broken failed at {path} line 2: relation "nope" does not exist (SQLSTATE 42P01). '
        "It was rolled back and is not recorded. 1 migration(s) applied before it in this run stay so "
        "(app/001_first); later ones were not attempted. Fix the SQL and run sqlmigrate_up again."
    )
    assert "  [2/2] Applying app/002_broken... FAILED\n" in err
    assert (
        f"nixmig: SQL migrations of database 'default' failed at startup (NIXMIG['APPLY_ON_STARTUP']); "
        f"not starting:\n{message}\n"
    ) in err
    assert err.rstrip().endswith(f"nixmig.exceptions.MigrationFailed: {message}")
    assert scratch_db.records() == [("app", "001_first")]


def test_apply_on_startup_applies_the_named_databases_then_closes_their_connections(
    scratch_db, three, use_tree
):
    use_tree(three, APPLY_ON_STARTUP=[scratch_db.alias])
    stream = io.StringIO()
    results = apply_on_startup(stream=stream)
    assert [r.ids for r in results] == [
        ["auth/001_create_users", "orgs/002_create_orgs", "auth/003_create_tokens"]
    ]
    assert stream.getvalue().splitlines()[-1].startswith("Applied 3 migration(s) in ")
    assert scratch_db.connection.connection is None  # a pre-forking server's workers must not share it
    assert len(scratch_db.records()) == 3


def test_apply_on_startup_is_off_by_default(scratch_db, three, use_tree):
    use_tree(three)
    assert apply_on_startup(stream=io.StringIO()) == []
    assert scratch_db.tables() == set()


def test_the_asgi_application_applies_even_when_loaded_inside_an_event_loop(scratch_db, three, use_tree):
    use_tree(three, APPLY_ON_STARTUP=[scratch_db.alias])

    async def load():  # uvicorn loads the application inside its running loop
        return get_asgi_application()

    application = asyncio.run(load())
    assert callable(application)
    assert len(scratch_db.records()) == 3


# -- RUN_WITH_MIGRATE ------------------------------------------------------------------------


def test_migrate_applies_sql_migrations_after_djangos_own_only_with_run_with_migrate(
    scratch_db, three, use_tree
):
    use_tree(three)
    out, err, rc = scratch_db.run("migrate", verbosity=1, interactive=False)
    assert rc == 0, err
    assert "Applying auth.0001_initial... OK" in out
    assert "SQL migrations" not in out
    assert "migrations" not in scratch_db.tables()

    use_tree(three, RUN_WITH_MIGRATE=True)
    out, err, rc = scratch_db.run("migrate", verbosity=1, interactive=False)
    assert rc == 0, err
    tail = out[out.index("SQL migrations (NIXMIG['RUN_WITH_MIGRATE']):") :]
    assert re.sub(r"\d+ ms|\d+\.\d+ s", "n", tail) == (
        "SQL migrations (NIXMIG['RUN_WITH_MIGRATE']):\n"
        "Operations to perform:\n  Apply 3 SQL migration(s)\nRunning migrations:\n"
        "  [1/3] Applying auth/001_create_users... OK (n)\n"
        "  [2/3] Applying orgs/002_create_orgs... OK (n)\n"
        "  [3/3] Applying auth/003_create_tokens... OK (n)\n"
        "Applied 3 migration(s) in n; skipped 0 already applied.\n"
    )
    assert len(scratch_db.records()) == 3


def test_migrate_check_fails_while_sql_migrations_are_pending_with_run_with_migrate(
    scratch_db, three, use_tree
):
    use_tree(three, RUN_WITH_MIGRATE=True)
    out, err, rc = scratch_db.run(
        "migrate", interactive=False, fake=True
    )  # Django's part done, SQL left alone
    assert out.endswith(
        "Skipped SQL migrations: --fake applies to Django's migrations only; use 'sqlmigrate_up "
        "--fake' to record SQL migrations without running them.\n"
    )
    assert "migrations" not in scratch_db.tables()
    out, err, rc = scratch_db.run("migrate", plan=True)
    assert out == (
        "Planned operations:\n  No planned migration operations.\nPlanned SQL migrations:\n"
        "  auth/001_create_users\n  orgs/002_create_orgs\n  auth/003_create_tokens\n"
    )
    with pytest.raises(SystemExit) as exited:
        scratch_db.run("migrate", verbosity=0, check_unapplied=True)
    assert exited.value.code == 1
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    assert scratch_db.run("migrate", verbosity=0, check_unapplied=True) == ("", "", 0)


# -- checks and runserver --------------------------------------------------------------------


def test_check_warns_about_pending_sql_migrations_of_the_databases_it_is_given(scratch_db, three, use_tree):
    use_tree(three)
    assert check_sql_migrations(databases=None) == []  # 'manage.py check' without --database
    assert check_sql_migrations(databases=[scratch_db.alias]) == [
        Warning(
            f"You have 3 unapplied SQL migration(s) in database {scratch_db.alias!r}: auth/001_create_users, "
            "orgs/002_create_orgs, auth/003_create_tokens. Your project may not work properly until you apply them.",
            hint=f"Run 'python manage.py sqlmigrate_up --database {scratch_db.alias}'.",
            id="nixmig.W001",
        )
    ]
    assert scratch_db.tables() == set()  # a check creates nothing
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    assert check_sql_migrations(databases=[scratch_db.alias]) == []


def test_check_warns_about_changed_files_and_tree_problems(scratch_db, three, use_tree):
    use_tree(three)
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    three.write("auth/001_create_users_up.sql", "CREATE TABLE users (id bigserial PRIMARY KEY);\n")
    [warning] = check_sql_migrations(databases=[scratch_db.alias])
    assert warning.id == "nixmig.W002"
    assert warning.msg == f"The SQL migrations of database {scratch_db.alias!r} are not in order: 1 changed"
    assert (
        warning.hint == f"Run 'python manage.py sqlmigrate_status --database {scratch_db.alias}' for details."
    )


def test_check_reports_an_unreachable_database_as_a_warning_with_the_connection_error(
    scratch_db, three, use_tree
):
    use_tree(three)
    connections.settings["nowhere"] = dict(
        scratch_db.settings, HOST="127.0.0.1", PORT="1", OPTIONS={"connect_timeout": 2}
    )
    try:
        [warning] = check_sql_migrations(databases=["nowhere"])
        assert warning.id == "nixmig.W004"
        assert warning.level == WARNING  # a warning: 'check' still succeeds
        assert warning.msg.startswith(
            f"The SQL migrations of database 'nowhere' could not be checked: Can't connect to database "
            f"'nowhere' ({scratch_db.settings['NAME']} on 127.0.0.1:1): "
        )
        assert "refused" in warning.msg  # the connection error itself
        assert "Check DATABASE_URL or settings.DATABASES and that the server is running." in warning.msg
        assert (
            warning.hint
            == "Run 'python manage.py sqlmigrate_status --database nowhere' once the database answers."
        )
    finally:
        connections["nowhere"].close()
        del connections["nowhere"]
        del connections.settings["nowhere"]


def test_manage_py_check_database_default_prints_the_warning_and_succeeds(scratch_db, three):
    proc = scratch_db.manage(
        "check",
        "--database",
        "default",
        env=scratch_db.env(
            DJANGO_SETTINGS_MODULE="settings_startup",
            NIXMIG_TEST_MIGRATIONS_DIR=str(three.path),
            PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "System check identified some issues:\n\nWARNINGS:\n"
        "?: (nixmig.W001) You have 3 unapplied SQL migration(s): auth/001_create_users, orgs/002_create_orgs, "
        "auth/003_create_tokens. Your project may not work properly until you apply them.\n"
        "\tHINT: Run 'python manage.py sqlmigrate_up'. NIXMIG['APPLY_ON_STARTUP'] is on, so the application "
        "applies them when it starts.\n\nSystem check identified 1 issue (0 silenced).\n"
    )
    assert scratch_db.tables() == set()  # checking applied nothing, even with APPLY_ON_STARTUP on


def _runserver_checks(scratch_db: ScratchDB, tree, order: str, command: str = "runserver") -> str:
    """Start 'manage.py runserver' (or ``command``) with nixmig listed first or last; return what it printed before serving."""
    env = scratch_db.env(
        DJANGO_SETTINGS_MODULE="settings_app_order",
        NIXMIG_TEST_APP_ORDER=order,
        NIXMIG_TEST_MIGRATIONS_DIR=str(tree.path),
        PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), command, "--noreload", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("Quit the server"):
                break
            lines.append(line)
    finally:
        proc.kill()
        proc.wait(DEADLINE)
    return "".join(lines)


@pytest.mark.parametrize("order", ["first", "last"])
def test_runserver_warns_about_pending_sql_migrations_wherever_nixmig_is_listed(scratch_db, three, order):
    printed = _runserver_checks(scratch_db, three, order)
    assert (
        "?: (nixmig.W001) You have 3 unapplied SQL migration(s): auth/001_create_users, orgs/002_create_orgs, "
        "auth/003_create_tokens. Your project may not work properly until you apply them.\n"
        "\tHINT: Run 'python manage.py sqlmigrate_up'.\n"
    ) in printed
    assert "Starting development server" in printed
    assert scratch_db.tables() == set()  # warning created nothing


def test_another_apps_development_server_warns_too(scratch_db, three):
    """django-extensions' runserver_plus (here: runserver under that name) runs the same system checks."""
    printed = _runserver_checks(scratch_db, three, "first", command="runserver_plus")
    assert "(nixmig.W001) You have 3 unapplied SQL migration(s)" in printed
    assert "Starting development server" in printed


def test_runserver_stays_quiet_when_up_to_date(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    printed = _runserver_checks(scratch_db, three, "last")
    assert "nixmig" not in printed and "System check identified no issues" in printed


# -- several databases -----------------------------------------------------------------------


class OnlyTheseRouter:
    """Lets nixmig migrate the databases in ``allowed`` only."""

    allowed: set[str] = set()

    def allow_migrate(self, db, app_label, **hints):
        if app_label == "nixmig":
            return db in self.allowed
        return None


@pytest.fixture
def router(settings):
    settings.DATABASE_ROUTERS = [f"{__name__}.OnlyTheseRouter"]
    yield OnlyTheseRouter
    OnlyTheseRouter.allowed = set()


def test_up_applies_to_each_database_named_with_its_own_records_and_a_summary(scratch_db, more_dbs, three):
    (other,) = more_dbs(1)
    scratch_db.run("sqlmigrate_up", dir=str(three.path), to="auth/001_create_users")
    out, err, rc = scratch_db.run(
        "sqlmigrate_up", dir=str(three.path), database=[scratch_db.alias, other.alias]
    )
    assert rc == 0, err
    text = re.sub(r"\d+ ms|\d+\.\d+ s", "n", out)
    assert text == (
        f"Database {scratch_db.alias!r}:\n"
        "Operations to perform:\n  Apply 2 SQL migration(s)\nRunning migrations:\n"
        "  [1/2] Applying orgs/002_create_orgs... OK (n)\n"
        "  [2/2] Applying auth/003_create_tokens... OK (n)\n"
        "Applied 2 migration(s) in n; skipped 1 already applied.\n"
        f"Database {other.alias!r}:\n"
        "Operations to perform:\n  Apply 3 SQL migration(s)\nRunning migrations:\n"
        "  [1/3] Applying auth/001_create_users... OK (n)\n"
        "  [2/3] Applying orgs/002_create_orgs... OK (n)\n"
        "  [3/3] Applying auth/003_create_tokens... OK (n)\n"
        "Applied 3 migration(s) in n; skipped 0 already applied.\n"
        "Summary:\n"
        f"  {scratch_db.alias}: Applied 2 migration(s) in n; skipped 1 already applied.\n"
        f"  {other.alias}: Applied 3 migration(s) in n; skipped 0 already applied.\n"
    )
    assert (
        scratch_db.records()
        == other.records()
        == [("auth", "001_create_users"), ("orgs", "002_create_orgs"), ("auth", "003_create_tokens")]
    )


def test_a_failure_on_one_database_does_not_stop_the_others_and_the_command_fails(
    scratch_db, more_dbs, three
):
    bad, good = more_dbs(2)
    bad.sql("CREATE TABLE orgs (id int)")  # 002 will fail there
    aliases = [bad.alias, good.alias]
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path), database=aliases, parallel=2)
    assert rc == 1
    assert f"Database {bad.alias!r}: Applying orgs/002_create_orgs failed at" in err
    assert 'relation "orgs" already exists (SQLSTATE 42P07)' in err
    assert err.rstrip().endswith(
        f"1 of 2 database(s) failed: {bad.alias}. The others are done; see each "
        "database's error above, fix it and run again."
    )
    assert "  [2/3] Applying orgs/002_create_orgs... FAILED\n" in out
    assert f"  {bad.alias}: FAILED\n" in out
    assert bad.records() == [("auth", "001_create_users")]
    assert len(good.records()) == 3


def test_parallel_runs_report_each_database_as_one_block(scratch_db, more_dbs, three):
    dbs = more_dbs(3)
    out, err, rc = scratch_db.run(
        "sqlmigrate_up", dir=str(three.path), database=[d.alias for d in dbs], parallel=3
    )
    assert rc == 0, err
    blocks = re.split(r"^Database '", out.split("Summary:\n")[0], flags=re.M)[1:]
    assert sorted(b.split("'")[0] for b in blocks) == sorted(d.alias for d in dbs)
    for block in blocks:  # never interleaved: each block holds its own run, in order
        assert re.findall(r"\[(\d)/3\] Applying", block) == ["1", "2", "3"]
    for db in dbs:
        assert len(db.records()) == 3
        # The worker threads closed their connections; a closed backend may linger a moment.
        for _ in range(100):
            sessions = db.value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            if sessions == 1:
                break
            time.sleep(0.05)
        assert sessions == 1


def test_all_databases_respects_the_routers(scratch_db, more_dbs, three, router):
    allowed, refused = more_dbs(2)
    router.allowed = {scratch_db.alias, allowed.alias}
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path), database=None, all_databases=True)
    assert rc == 0, err
    assert (
        "  default: skipped, the database routers don't allow migrating the nixmig app there (allow_migrate)"
        in out
    )
    assert f"  {refused.alias}: skipped, the database routers" in out
    assert len(scratch_db.records()) == len(allowed.records()) == 3
    assert refused.tables() == set()


def test_all_databases_leaves_out_databases_that_are_not_postgresql(scratch_db, three, router):
    router.allowed = {scratch_db.alias, "lite"}
    connections.settings["lite"] = dict(
        scratch_db.settings, ENGINE="django.db.backends.sqlite3", NAME=":memory:"
    )
    try:
        out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path), database=None, all_databases=True)
    finally:
        del connections["lite"]
        del connections.settings["lite"]
    assert rc == 0, err
    assert "  lite: skipped, it is sqlite, not PostgreSQL\n" in out
    assert len(scratch_db.records()) == 3


def test_a_database_the_routers_exclude_is_skipped_with_a_note(scratch_db, three, router):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path))
    assert (out, err, rc) == (
        f"Skipped database {scratch_db.alias!r}: the database routers don't allow migrating "
        "the nixmig app there (allow_migrate).\n",
        "",
        0,
    )
    assert scratch_db.tables() == set()


def test_an_unknown_database_is_an_error_before_anything_runs(scratch_db, three):
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path), database=[scratch_db.alias, "nope"])
    assert rc == 1
    assert err.startswith("There is no database 'nope' in settings.DATABASES")
    assert scratch_db.tables() == set()


def test_status_check_covers_every_database(scratch_db, more_dbs, three):
    (other,) = more_dbs(1)
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    out, err, rc = scratch_db.run(
        "sqlmigrate_status", dir=str(three.path), database=[scratch_db.alias, other.alias], check=True
    )
    assert rc == 1
    assert (
        f"  {scratch_db.alias}: up to date\n  {other.alias}: 3 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back\n"
        in out
    )
    assert err == (
        f"Not up to date: database {other.alias!r}: 3 pending, 0 changed, 0 missing, 0 partly applied, 0 partly rolled back, "
        "0 problem(s)."
    )


# -- signals ---------------------------------------------------------------------------------


def test_signals_are_sent_per_run_and_per_migration(scratch_db, three):
    seen = []

    def on(name):
        def receiver(sender, **kwargs):
            kwargs.pop("signal")
            if "plan" in kwargs:
                kwargs["plan"] = [e.id for e in kwargs["plan"]]
            if "result" in kwargs:
                kwargs["result"] = kwargs["result"].ids
            kwargs.pop("ms", None)
            seen.append((name, kwargs))

        return receiver

    receivers = {
        name: on(name) for name in ("pre_sqlmigrate", "pre_migration", "post_migration", "post_sqlmigrate")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    try:
        scratch_db.run("sqlmigrate_up", dir=str(three.path), to="orgs/002_create_orgs")
        scratch_db.run("sqlmigrate_down", dir=str(three.path))
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    db = scratch_db.alias
    assert seen == [
        (
            "pre_sqlmigrate",
            {
                "direction": "up",
                "database": db,
                "plan": ["auth/001_create_users", "orgs/002_create_orgs"],
                "fake": False,
            },
        ),
        (
            "pre_migration",
            {"direction": "up", "database": db, "migration_id": "auth/001_create_users", "fake": False},
        ),
        (
            "post_migration",
            {"direction": "up", "database": db, "migration_id": "auth/001_create_users", "fake": False},
        ),
        (
            "pre_migration",
            {"direction": "up", "database": db, "migration_id": "orgs/002_create_orgs", "fake": False},
        ),
        (
            "post_migration",
            {"direction": "up", "database": db, "migration_id": "orgs/002_create_orgs", "fake": False},
        ),
        (
            "post_sqlmigrate",
            {"direction": "up", "database": db, "result": ["auth/001_create_users", "orgs/002_create_orgs"]},
        ),
        (
            "pre_sqlmigrate",
            {"direction": "down", "database": db, "plan": ["orgs/002_create_orgs"], "fake": False},
        ),
        (
            "pre_migration",
            {"direction": "down", "database": db, "migration_id": "orgs/002_create_orgs", "fake": False},
        ),
        (
            "post_migration",
            {"direction": "down", "database": db, "migration_id": "orgs/002_create_orgs", "fake": False},
        ),
        ("post_sqlmigrate", {"direction": "down", "database": db, "result": ["orgs/002_create_orgs"]}),
    ]


def test_a_failed_migration_gets_pre_migration_but_no_post_signals(scratch_db, tree):
    tree.pair("app/001_broken", "SELECT * FROM nope;\n", "")
    seen = []

    def receiver(sender, signal, **kwargs):
        seen.append(signal)

    for signal in (signals.pre_migration, signals.post_migration, signals.post_sqlmigrate):
        signal.connect(receiver)
    try:
        assert scratch_db.run("sqlmigrate_up", dir=str(tree.path))[2] == 1
    finally:
        for signal in (signals.pre_migration, signals.post_migration, signals.post_sqlmigrate):
            signal.disconnect(receiver)
    assert seen == [signals.pre_migration]


# -- --sql -----------------------------------------------------------------------------------


def test_up_sql_prints_the_exact_queries_with_the_transaction_wrapper_and_runs_nothing(scratch_db, tree):
    tree.pair("auth/001_create_users", "CREATE TABLE users (id serial PRIMARY KEY);\n", "DROP TABLE users;\n")
    tree.pair(
        "app/002_index", "-- nixmig:no-transaction\nCREATE INDEX CONCURRENTLY users_id ON users (id);\n", ""
    )
    up1, up2 = (
        checksum(tree.path / "auth/001_create_users_up.sql"),
        checksum(tree.path / "app/002_index_up.sql"),
    )
    cic = hashlib.sha256(b"CREATE INDEX CONCURRENTLY users_id ON users (id)").hexdigest()
    timing = (
        "clock_timestamp(), round((1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()))"
        "::numeric, 3)::float8)"
    )
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(tree.path), sql=True)
    assert (err, rc) == ("", 0)
    assert out == (
        "-- the tracking table\n"
        "BEGIN;\n"
        'CREATE TABLE IF NOT EXISTS "migrations" (id BIGSERIAL PRIMARY KEY, name VARCHAR NOT NULL, applied_at '
        "TIMESTAMPTZ NOT NULL DEFAULT now(), module VARCHAR, checksum VARCHAR(64), execution_ms DOUBLE PRECISION); "
        'CREATE UNIQUE INDEX IF NOT EXISTS "migrations_module_name_key" ON "migrations" (module, name);\n'
        "COMMIT;\n"
        "-- auth/001_create_users\n"
        "BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '0';\n"
        "CREATE TABLE users (id serial PRIMARY KEY);\n"
        "\n;\n"
        'INSERT INTO "migrations" (name, module, checksum, applied_at, execution_ms) VALUES '
        f"('001_create_users', 'auth', '{up1}', {timing}; COMMIT;\n"
        "-- app/002_index\n"
        'CREATE TABLE IF NOT EXISTS "migrations_progress" (module VARCHAR NOT NULL, name VARCHAR NOT NULL, '
        "direction VARCHAR(4) NOT NULL, checksum VARCHAR(64) NOT NULL, statements_done INTEGER NOT NULL, "
        "statement_hashes TEXT[] NOT NULL, total INTEGER NOT NULL, error TEXT, updated_at TIMESTAMPTZ NOT NULL "
        "DEFAULT now(), PRIMARY KEY (module, name, direction));\n"
        "SET lock_timeout = '10s'; SET statement_timeout = '0';\n"
        # Before a statement that can't run in a transaction: it is marked in flight (0 done, 1 hash).
        'BEGIN; INSERT INTO "migrations_progress" (module, name, direction, checksum, statements_done, '
        f"statement_hashes, total, error, updated_at) VALUES ('app', '002_index', 'up', '{up2}', 0, ARRAY['{cic}']"
        "::text[], 1, NULL, now()) ON CONFLICT (module, name, direction) DO UPDATE SET checksum = EXCLUDED.checksum, "
        "statements_done = EXCLUDED.statements_done, statement_hashes = EXCLUDED.statement_hashes, "
        "total = EXCLUDED.total, error = NULL, updated_at = now(); COMMIT;\n"
        "CREATE INDEX CONCURRENTLY users_id ON users (id);\n"
        'BEGIN; INSERT INTO "migrations" (name, module, checksum, applied_at, execution_ms) VALUES '
        f"('002_index', 'app', '{up2}', {timing}; DELETE FROM \"migrations_progress\" WHERE module = 'app' "
        "AND name = '002_index'; COMMIT;\n"
        "RESET lock_timeout; RESET statement_timeout;\n"
    )
    assert scratch_db.tables() == set()


def test_up_sql_with_atomic_wraps_the_whole_batch_in_one_transaction(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three.path), to="auth/001_create_users")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path), sql=True, atomic=True)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:3] == [
        "-- orgs/002_create_orgs",
        "BEGIN;",
        "SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '0';",
    ]
    assert lines[-1] == "COMMIT;"
    assert out.count("BEGIN;") == 1 and out.count("COMMIT;") == 1
    assert scratch_db.records() == [("auth", "001_create_users")]
    assert "orgs" not in scratch_db.tables()


def test_down_sql_prints_the_exact_rollback_and_runs_nothing(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    row = scratch_db.value("SELECT id FROM migrations WHERE name = '003_create_tokens'")
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(three.path), sql=True)
    assert (err, rc) == ("", 0)
    assert out == (
        "-- auth/003_create_tokens\n"
        "BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '0';\n"
        "DROP TABLE tokens;\n"
        "\n;\n"
        f'DELETE FROM "migrations" WHERE id = {row}; COMMIT;\n'
    )
    assert len(scratch_db.records()) == 3
    assert "tokens" in scratch_db.tables()


def test_sql_with_nothing_to_run_says_so_as_an_sql_comment(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three.path))
    assert scratch_db.run("sqlmigrate_up", dir=str(three.path), sql=True) == (
        "-- No migrations to apply.\n",
        "",
        0,
    )


# -- progress and summary --------------------------------------------------------------------


def test_up_shows_progress_counters_and_a_summary_with_applied_skipped_and_time(scratch_db, three):
    scratch_db.run("sqlmigrate_up", dir=str(three.path), to="auth/001_create_users")
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(three.path))
    assert rc == 0, err
    assert re.sub(r"\d+ ms|\d+\.\d\d s", "n", out) == (
        "Operations to perform:\n  Apply 2 SQL migration(s)\nRunning migrations:\n"
        "  [1/2] Applying orgs/002_create_orgs... OK (n)\n"
        "  [2/2] Applying auth/003_create_tokens... OK (n)\n"
        "Applied 2 migration(s) in n; skipped 1 already applied.\n"
    )
