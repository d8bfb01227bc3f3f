"""Security: names and values reach SQL only through nixmig.sqlnames; untrusted schema names can't run SQL."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from nixmig import api, sqlnames
from nixmig.exceptions import NixmigError, UnsafeName

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nixmig"

# A schema name that closes the quoted identifier if its '"' is not doubled, then drops a table.
EVIL = 'x"; DROP TABLE victim; --'
EVIL_NO_SPACE = 'x";DROP/**/TABLE/**/victim;--'  # a targets file splits fields on white space


def run(command: str, **options) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, stdout=out, stderr=err, **options)
        rc = 0
    except CommandError as exc:
        err.write(str(exc))
        rc = exc.returncode
    return out.getvalue(), err.getvalue(), rc


@pytest.fixture
def victim(scratch_db):
    """A table that an injected statement would drop; the test asserts it survives."""
    scratch_db.sql("CREATE TABLE public.victim (id int); INSERT INTO public.victim VALUES (1)")

    def alive() -> bool:
        return scratch_db.value("SELECT count(*) FROM public.victim") == 1

    return alive


@pytest.fixture
def small_tree(tree):
    tree.pair("core/001_things", "CREATE TABLE things (id int);\n", "DROP TABLE things;\n")
    return tree


def schema_migrated(db, schema: str) -> bool:
    """True when ``schema`` exists and holds the tree's table and a tracking row for it."""
    found = db.value("SELECT to_regclass(%s) IS NOT NULL", [sqlnames.ident(schema, "things")])
    rows = db.value(f"SELECT count(*) FROM {sqlnames.ident(schema, 'migrations')}") if found else 0
    return bool(found) and rows == 1


# -- the module itself --------------------------------------------------------------------------


def test_identifiers_are_quoted_with_inner_quotes_doubled():
    assert sqlnames.ident("a") == '"a"'
    assert sqlnames.ident('x"y') == '"x""y"'
    assert sqlnames.ident("s", "t") == '"s"."t"'
    assert sqlnames.table("nx.migrations", "_progress") == '"nx"."migrations_progress"'


def test_literals_are_quoted_and_backslashes_kept():
    assert sqlnames.literal("it's") == "'it''s'"
    assert sqlnames.literal(None) == "NULL"
    assert sqlnames.literal("a\\b").strip() == "E'a\\\\b'"
    with pytest.raises(UnsafeName):
        sqlnames.literal("a\x00b")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        ("a.b", "contains a '.'"),
        ("tenant\n", "contains a control character"),
        ("ten\x00ant", "contains a control character"),
        ("ten\u202eant", "contains a control character"),
        (" tenant", "starts or ends with white space"),
        ("x" * 64, "is longer than 63 bytes"),
        ("pg_tenant", "starts with 'pg_'"),
    ],
)
def test_unusable_schema_names_are_refused_with_the_reason(name, problem):
    with pytest.raises(UnsafeName) as caught:
        sqlnames.check_schema(name, "--schema")
    assert str(caught.value).startswith(f"--schema: the schema name {name!r} {problem}")


def test_quotes_and_semicolons_in_schema_names_are_allowed_because_they_are_quoted():
    assert sqlnames.check_schema(EVIL, "--schema") == EVIL


# -- injection through each way a schema name comes in -------------------------------------------


def test_schemas_from_a_query_cannot_inject_sql(scratch_db, small_tree, victim):
    scratch_db.sql("CREATE TABLE tenants (name text); INSERT INTO tenants VALUES (%s), ('plain')", [EVIL])
    out, err, rc = run(
        "sqlmigrate_up",
        dir=str(small_tree),
        database=[scratch_db.alias],
        schemas_query="SELECT name FROM tenants ORDER BY name",
        create_schemas=True,
    )
    assert victim(), err
    assert rc == 0, err
    assert schema_migrated(scratch_db, EVIL)
    assert schema_migrated(scratch_db, "plain")
    assert scratch_db.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'x'") == 0


def test_a_schema_option_cannot_inject_sql(scratch_db, small_tree, victim):
    out, err, rc = run(
        "sqlmigrate_up", dir=str(small_tree), database=[scratch_db.alias], schemas=[EVIL], create_schemas=True
    )
    assert victim(), err
    assert rc == 0, err
    assert schema_migrated(scratch_db, EVIL)
    out, err, rc = run("sqlmigrate_down", dir=str(small_tree), database=[scratch_db.alias], schemas=[EVIL])
    assert victim(), err
    assert rc == 0, err
    assert scratch_db.value("SELECT to_regclass(%s)", [sqlnames.ident(EVIL, "things")]) is None


def test_a_targets_file_cannot_inject_sql(scratch_db, small_tree, victim, tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text(f"{scratch_db.alias}:{EVIL_NO_SPACE}\n{scratch_db.url} {EVIL_NO_SPACE}2\n")
    out, err, rc = run("sqlmigrate_up", dir=str(small_tree), targets_file=str(targets), create_schemas=True)
    assert victim(), err
    assert rc == 0, err
    assert schema_migrated(scratch_db, EVIL_NO_SPACE)
    assert schema_migrated(scratch_db, EVIL_NO_SPACE + "2")


def test_the_tracking_table_setting_cannot_inject_sql(scratch_db, small_tree, victim, settings):
    name = 'migrations"; DROP TABLE victim; --'
    settings.NIXMIG = {**settings.NIXMIG, "TABLE": name}
    out, err, rc = run("sqlmigrate_up", dir=str(small_tree), database=[scratch_db.alias])
    assert victim(), err
    assert rc == 0, err
    assert scratch_db.value(f"SELECT count(*) FROM public.{sqlnames.ident(name)}") == 1
    out, err, rc = run("sqlmigrate_status", dir=str(small_tree), database=[scratch_db.alias])
    assert rc == 0, err
    assert " [X] 001_things" in out
    assert victim()


def test_a_schema_name_with_a_line_break_is_refused_before_anything_runs(scratch_db, small_tree, victim):
    scratch_db.sql("CREATE TABLE tenants (name text); INSERT INTO tenants VALUES ('ok'), (E'bad\\nname')")
    out, err, rc = run(
        "sqlmigrate_up",
        dir=str(small_tree),
        database=[scratch_db.alias],
        schemas_query="SELECT name FROM tenants",
        create_schemas=True,
    )
    assert rc == 1
    assert (
        f"--schemas-from on database {scratch_db.alias!r}: the schema name 'bad\\nname' contains a control"
        in err
    )
    assert "Traceback" not in err
    assert scratch_db.value("SELECT count(*) FROM pg_namespace WHERE nspname IN ('ok', E'bad\\nname')") == 0
    assert victim()


def test_the_api_refuses_an_unusable_schema_name(scratch_db, small_tree):
    with pytest.raises(NixmigError) as caught:
        api.migrate_up(directory=small_tree.path, database=scratch_db.alias, schema="a.b", create_schema=True)
    assert "the schema name 'a.b' contains a '.'" in str(caught.value)
    assert scratch_db.value("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'a%%'") == 0


# -- no identifier formatting into SQL outside nixmig.sqlnames --------------------------------------

SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE|COMMENT ON|GRANT|FROM|INTO|SET|RESET|"
    r"SCHEMA|TABLE|DATABASE|INDEX|search_path)\b"
)
# What an f-string that holds SQL may interpolate: names built by sqlnames, numbers, and other SQL.
SAFE_CALLS = {"ident", "literal", "table", "quoted_table", "search_path", "values", "int", "len", "q"}
SAFE_NAMES = {
    # attributes and variables that hold the result of sqlnames.ident/table (checked where they are set)
    "qtable",
    "qprogress",
    "index_name",
    "quoted",
    "table",  # plan.py: table = quoted_table(table) just before
    "rows",  # recorder.adopt_sql: rows = values(...)
    "hashes_sql",  # recorder.progress_sql: literal(list) + '::text[]'
    "placeholders",  # recorder.record_adopted: '(%s, %s, ...)' for parameters
    "extra",  # recorder.read: column names from NIXMIG_COLUMNS, a constant
    "path",  # executor._settings: search_path(...) or ''
    "scope",  # executor._settings: 'SET' or 'SET LOCAL'
    "prefix",
    "body",
    "query",
    "sql",
    "finish",
    "after",
    "flight",
    "settings",
    "suffix",
    "values",
    "i",  # snapshot: an enumerate() index
    "cat",  # snapshot: a catalog name from the constant _TRACKED
}


def _expression_is_safe(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in SAFE_CALLS
    if isinstance(node, ast.Name):  # a name known to hold SQL, one ending in _sql, or a module constant
        return node.id in SAFE_NAMES or node.id.endswith("_sql") or node.id.isupper()
    if isinstance(node, ast.Attribute):
        return node.attr in SAFE_NAMES
    if isinstance(node, ast.IfExp):
        return _expression_is_safe(node.body) and _expression_is_safe(node.orelse)
    if isinstance(node, ast.BinOp):
        return _expression_is_safe(node.left) and _expression_is_safe(node.right)
    if isinstance(node, ast.JoinedStr):
        return all(_expression_is_safe(v.value) for v in node.values if isinstance(v, ast.FormattedValue))
    return False


def _sql_fstring_findings(path: Path, root: Path = ROOT) -> list[str]:
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("execute", "executemany") or not node.args:
            continue
        for sub in ast.walk(node.args[0]):
            if isinstance(sub, ast.JoinedStr):
                text = "".join(v.value for v in sub.values if isinstance(v, ast.Constant))
                if SQL_WORDS.search(text) and not _expression_is_safe(sub):
                    found.append(
                        f"{path.relative_to(root)}:{sub.lineno}: {ast.get_source_segment(source, sub)}"
                    )
            elif isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mod):
                found.append(f"{path.relative_to(root)}:{sub.lineno}: %-formatting of a query")
            elif isinstance(sub, ast.Call) and getattr(sub.func, "attr", "") == "format":
                found.append(f"{path.relative_to(root)}:{sub.lineno}: str.format of a query")
    return found


HAND_QUOTING = [
    (re.compile(r"quote_name\s*\("), "Django's quote_name (does not double a '\"' inside a name)"),
    (re.compile(r"""replace\(\s*(['"])(\\?"|')\1\s*,"""), "hand-written quote doubling"),
    (
        re.compile(r"""f(['"]).*?\\?"\{[^}]+\}\\?".*?\1"""),
        "a name in hand-written double quotes",
    ),  # SQL lines
    (re.compile(r"""'"'\s*\+|\+\s*'"'"""), "a name concatenated with '\"'"),
    (re.compile(r"def literal\("), "a home-made literal()"),
    (re.compile(r"\bsql\.(Identifier|Literal)\b"), "psycopg.sql used directly (use nixmig.sqlnames)"),
]


def _hand_quoting_findings(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for pattern, what in HAND_QUOTING:
            if pattern.search(line) and (what != HAND_QUOTING[2][1] or SQL_WORDS.search(line)):
                found.append(f"{path.relative_to(root)}:{number}: {what}: {line.strip()}")
    return found


def nixmig_sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "sqlnames.py"]


def test_no_identifier_or_value_is_formatted_into_sql_outside_sqlnames():
    found = [
        f for path in nixmig_sources() for f in _sql_fstring_findings(path) + _hand_quoting_findings(path)
    ]
    assert found == [], "Build these with nixmig.sqlnames:\n" + "\n".join(found)


def test_the_source_check_finds_the_old_ways_of_quoting(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(cursor, connection, schema, name):\n"
        '    cursor.execute(f"CREATE SCHEMA {connection.ops.quote_name(schema)}")\n'
        '    cursor.execute(f"SET search_path = {schema}")\n'
        '    cursor.execute("DROP TABLE %s" % name)\n'
        '    return "\'" + name.replace("\'", "\'\'") + "\'"\n'
    )
    found = _sql_fstring_findings(bad, tmp_path) + _hand_quoting_findings(bad, tmp_path)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "2", "5"]


# -- a schema-qualified tracking table in the admin ------------------------------------------------


@pytest.mark.django_db
def test_the_admin_lists_a_schema_qualified_tracking_table(admin_client, tree, settings):
    from django.db import connection

    from nixmig.recorder import Recorder

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    tree.pair("core/001_things", "CREATE TABLE things (id int);\n", "DROP TABLE things;\n")
    tree.pair("core/002_more", "CREATE TABLE more (id int);\n", "DROP TABLE more;\n")
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path), "TABLE": "nx.migrations"}
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA nx")
    recorder = Recorder(connection)
    recorder.ensure_schema(recorder.read())
    recorder.record_applied(api.load_tree(tree.path).get("core/001_things"))
    response = admin_client.get("/admin/nixmig/migrationrecord/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "001_things" in html
    assert "core/002_more" in html  # pending
    record_id = connection.cursor().execute('SELECT id FROM "nx"."migrations"').fetchone()[0]
    assert admin_client.get(f"/admin/nixmig/migrationrecord/{record_id}/change/").status_code == 200


# -- secrets: URLs without password, aliases not derived from secrets, --only-failed credentials -----

PASSWORD = "S3cr/t@pw"  # a '/' and an '@': both must be percent-encoded in a URL


@pytest.fixture(scope="module")
def password_server():
    """A private PostgreSQL that checks passwords (scram) for the role tenant_owner; stopped by pid."""
    import os

    from pgcluster import Cluster, _ensure_user, available_versions, suite_version

    version = suite_version()
    bindir, user = available_versions().get(version, (None, None))
    if bindir is None:
        pytest.skip(f"no PostgreSQL {version} binaries to start a private server with password checks")
    if os.geteuid() == 0:
        _ensure_user(user)
    cluster = Cluster(version, bindir, user, max_connections=20)
    try:
        cluster.init()
        (cluster.data / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        cluster.start()
        with cluster.connect() as conn:
            conn.execute(f"CREATE ROLE tenant_owner LOGIN PASSWORD {sqlnames.literal(PASSWORD)}")
            conn.execute("CREATE DATABASE tenants OWNER tenant_owner")
        yield cluster
    finally:
        cluster.stop()


def tenant_url(cluster, password: str = PASSWORD) -> str:
    from urllib.parse import quote

    return (
        f"postgres://tenant_owner:{quote(password, safe='')}@{quote(str(cluster.socket_dir), safe='')}:"
        f"{cluster.port}/tenants"
    )


def test_the_private_server_really_checks_the_password(password_server):
    import psycopg

    where = {"host": str(password_server.socket_dir), "port": password_server.port, "dbname": "tenants"}
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(user="tenant_owner", connect_timeout=5, **where).close()
    psycopg.connect(user="tenant_owner", password=PASSWORD, connect_timeout=5, **where).close()


def test_only_failed_takes_the_password_from_the_targets_file_not_the_report(
    password_server, small_tree, tmp_path, django_db_blocker
):
    import hashlib
    import json

    url = tenant_url(password_server)
    with password_server.connect("tenants") as conn:
        conn.execute(
            "CREATE SCHEMA t1 AUTHORIZATION tenant_owner; CREATE SCHEMA t2 AUTHORIZATION tenant_owner; "
            "CREATE TABLE t2.things (id int)"  # owned by postgres: t2's 001 fails
        )
    targets = tmp_path / "targets.txt"
    targets.write_text(f"{url} t1\n{url} t2\n")
    report = tmp_path / "report.json"
    with django_db_blocker.unblock():
        out, err, rc = run(
            "sqlmigrate_up",
            dir=str(small_tree),
            targets_file=str(targets),
            report=str(report),
            on_error="continue",
        )
    assert rc == 1, err
    text = out + err + report.read_text()
    assert "S3cr" not in text and "S3cr%2Ft%40pw" not in text
    assert hashlib.sha256(url.encode()).hexdigest()[:12] not in text
    statuses = {t["target"].rsplit(" ", 1)[1]: t["status"] for t in json.loads(report.read_text())["targets"]}
    assert statuses == {"t1": "done", "t2": "failed"}, out + err

    with password_server.connect("tenants") as conn:
        conn.execute("DROP TABLE t2.things")
    again = tmp_path / "again.json"
    with django_db_blocker.unblock():
        out, err, rc = run("sqlmigrate_up", dir=str(small_tree), only_failed=str(report), report=str(again))
    assert rc == 0, err
    assert [t["status"] for t in json.loads(again.read_text())["targets"]] == ["done"]
    assert "S3cr" not in out + err + again.read_text()
    with password_server.connect("tenants") as conn:
        assert conn.execute("SELECT count(*) FROM t2.migrations").fetchone()[0] == 1


def test_a_url_report_of_an_older_nixmig_is_refused_rather_than_run_without_password(tmp_path):
    import json

    report = tmp_path / "old.json"
    report.write_text(
        json.dumps({"targets": [{"target": "postgres://u@db.example/app t1", "status": "failed"}]})
    )
    out, err, rc = run("sqlmigrate_up", dir=str(tmp_path), only_failed=str(report))
    assert rc == 1
    assert (
        "names database URL targets (postgres://u@db.example/app t1), and a report keeps no passwords" in err
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgres://owner:se/cret@127.0.0.1:1/app",  # an unescaped '/': not a URL dj-database-url reads
        "postgres://owner:se#cret@127.0.0.1:1/app",
        "postgres://owner:se/cret@127.0.0.1:1",  # and no database either
    ],
)
def test_a_url_that_cant_be_read_is_shown_without_its_password(url, tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text(url + "\n")
    out, err, rc = run("sqlmigrate_status", dir=str(tmp_path), targets_file=str(targets))
    assert rc == 1
    assert "cret" not in out + err
    assert "Traceback" not in err
    assert f"{targets} line 1: can't read the database URL 'postgres://owner@127.0.0.1:1" in err


def test_a_verify_database_url_that_cant_be_read_is_shown_without_its_password(
    scratch_db, small_tree, settings
):
    settings.NIXMIG = {**settings.NIXMIG, "VERIFY_DATABASE_URL": "postgres://owner:se/cret@127.0.0.1:1/x"}
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(small_tree))
    assert rc == 2, out + err  # verify's exit code when it can't run at all
    assert "cret" not in out + err
    assert (
        "NIXMIG['VERIFY_DATABASE_URL']: can't read the database URL 'postgres://owner@127.0.0.1:1/x'" in err
    )


def test_url_aliases_are_numbered_and_never_mix_credentials():
    from django.db import connections

    from nixmig import databases

    a = "postgres://u:one@127.0.0.1:1/app"
    b = "postgres://u:two@127.0.0.1:1/app"
    try:
        alias_a, alias_b = databases.register_url(a, "t"), databases.register_url(b, "t")
        assert databases.register_url(a, "t") == alias_a != alias_b
        assert re.fullmatch(r"nixmig_target_\d+", alias_a)
        assert connections.settings[alias_a]["PASSWORD"] == "one"
        assert connections.settings[alias_b]["PASSWORD"] == "two"
    finally:
        databases.forget(alias_a)
        databases.forget(alias_b)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgres://u:pw@db:5433/app", "postgres://u@db:5433/app"),
        ("postgres://u:se/cr@t@db/app", "postgres://u@db/app"),
        ("postgres://u@db/app", "postgres://u@db/app"),
        ("postgres://:pw@db/app", "postgres://db/app"),
        ("postgres://db/app?sslmode=require&password=pw", "postgres://db/app?sslmode=require"),
        ("postgres://db/app?password=pw", "postgres://db/app"),
    ],
)
def test_urls_are_shown_without_any_password(url, shown):
    from nixmig.databases import without_password

    assert without_password(url) == shown


# -- odd files: only regular files, names matched whole, a size limit ------------------------------


def test_a_fifo_in_the_tree_is_refused_and_status_does_not_hang(scratch_db, small_tree):
    import os

    os.mkfifo(small_tree.path / "core" / "002_x_up.sql")
    proc = scratch_db.manage("sqlmigrate_status", "--dir", str(small_tree), timeout=60)  # a hang fails here
    assert (
        "core/002_x_up.sql: is a named pipe (FIFO), not a regular file; nixmig reads only regular files."
        in (proc.stdout + proc.stderr)
    )
    assert "Traceback" not in proc.stderr


def test_a_fifo_as_a_down_file_is_refused_when_it_would_run(scratch_db, small_tree):
    import os

    (small_tree.path / "core" / "001_things_down.sql").unlink()
    os.mkfifo(small_tree.path / "core" / "001_things_down.sql")
    assert scratch_db.manage("sqlmigrate_up", "--dir", str(small_tree), timeout=60).returncode == 0
    proc = scratch_db.manage("sqlmigrate_down", "--dir", str(small_tree), timeout=60)
    assert proc.returncode == 1
    assert "core/001_things_down.sql: is a named pipe (FIFO), not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert scratch_db.value("SELECT count(*) FROM migrations") == 1  # nothing rolled back


def test_a_socket_and_a_device_are_refused_by_the_reader(small_tree, monkeypatch):
    import os
    import socket

    from nixmig.tree import FileRefused, _read, load_tree

    folder = small_tree.path / "core"
    monkeypatch.chdir(folder)  # a socket path may hold at most 107 bytes: bind a relative one
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("003_s_up.sql")
        tree = load_tree(small_tree.path)
    finally:
        server.close()
    assert [p.message for p in tree.problems] == [
        "core/003_s_up.sql: is a socket, not a regular file; nixmig reads only regular files."
    ]
    assert os.path.exists("/dev/null")
    with pytest.raises(FileRefused, match="is a character device, not a regular file"):
        _read("/dev/null")


def test_a_file_name_with_a_trailing_line_break_is_refused(small_tree):
    from nixmig.tree import load_tree

    small_tree.write("core/003_b_up.sql\n", "CREATE TABLE b (id int);\n")
    tree = load_tree(small_tree.path)
    assert [m.id for m in tree.migrations] == ["core/001_things"]
    assert [p.message.split(":")[0] for p in tree.problems] == ["core/003_b_up.sql\\n"]
    assert "the name does not follow <NNN>_<name>_up.sql" in tree.problems[0].message


def test_a_folder_name_with_a_trailing_line_break_is_refused(small_tree):
    from nixmig.tree import load_tree

    small_tree.write("mod2\n/002_c_up.sql", "CREATE TABLE c (id int);\n")
    tree = load_tree(small_tree.path)
    assert [m.id for m in tree.migrations] == ["core/001_things"]
    assert [p.message for p in tree.problems] == [
        "mod2\\n/: is not a valid module folder name (use letters, digits, '_', '-' and '.', no spaces or "
        "control characters); rename the folder."
    ]


def test_files_over_the_size_limit_are_refused_with_the_setting_named(scratch_db, small_tree, settings):
    small_tree.pair(
        "core/002_big", "SELECT 1;\n" + "-- padding\n" * 200, "SELECT 2;\n" + "-- padding\n" * 200
    )
    settings.NIXMIG = {**settings.NIXMIG, "MAX_FILE_BYTES": 1000}
    out, err, rc = scratch_db.run("sqlmigrate_up", dir=str(small_tree))
    assert rc == 1
    assert (
        "core/002_big_up.sql: is 2,210 bytes, over NIXMIG['MAX_FILE_BYTES'] (1,000 bytes); split it into several "
        "migrations, or raise the setting if a file this large is intended." in err
    )
    assert scratch_db.value("SELECT to_regclass('migrations')") is None  # nothing ran


def test_a_down_file_over_the_size_limit_is_refused_when_it_would_run(scratch_db, small_tree, settings):
    assert scratch_db.run("sqlmigrate_up", dir=str(small_tree))[2] == 0
    small_tree.write("core/001_things_down.sql", "DROP TABLE things;\n" + "-- padding\n" * 200)
    settings.NIXMIG = {**settings.NIXMIG, "MAX_FILE_BYTES": 1000}
    out, err, rc = scratch_db.run("sqlmigrate_down", dir=str(small_tree))  # a down file is read only now
    assert rc == 1
    assert "core/001_things_down.sql: is 2,219 bytes, over NIXMIG['MAX_FILE_BYTES'] (1,000 bytes)" in err
    assert scratch_db.value("SELECT count(*) FROM migrations") == 1


def test_a_size_limit_that_is_not_a_number_is_refused(scratch_db, small_tree, settings):
    settings.NIXMIG = {**settings.NIXMIG, "MAX_FILE_BYTES": "64MB"}
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(small_tree))
    assert rc == 1
    assert err.startswith("NIXMIG['MAX_FILE_BYTES'] = '64MB' is not a size;")
