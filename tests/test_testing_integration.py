"""Issue 12: test databases get the SQL schema (manage.py test, pytest-django, --keepdb, --parallel, xdist).

A small Django project is written to a temp folder: an unmanaged model ``Product`` over the
table ``products`` that an SQL migration creates (with a CHECK constraint Django knows
nothing about), Django TestCases and pytest tests that insert and read it. Its test runs
are separate processes on the suite's server (DATABASE_URL); each test names its own test
database, so templates never cross tests, and everything named after the module's prefix
is dropped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, _url
from django.core.management import call_command
from django.db import connections

from nixmig import api, testing
from nixmig.recorder import Recorder

PREFIX = f"t12_{os.getpid()}_"

SETTINGS = """
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "nixmig", "shop"]
DATABASES = {"default": dj_database_url.config(conn_max_age=0)}
DATABASES["default"]["TEST"] = {"NAME": os.environ["SHOP_TEST_DB"]}
if os.environ.get("SHOP_TEST_MIGRATE") == "0":
    DATABASES["default"]["TEST"]["MIGRATE"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
NIXMIG = {"MIGRATIONS_DIR": BASE_DIR / "migrations_sql",
          "TEST_REBUILD_CHANGED": os.environ.get("SHOP_REBUILD") == "1",
          "TEST_SPARES": int(os.environ.get("SHOP_SPARES", "0"))}  # the tests that need spares ask for them
"""

MODELS = """
from django.db import models


class Product(models.Model):
    name = models.TextField()
    price_cents = models.IntegerField()

    class Meta:
        managed = False  # the table comes from migrations_sql/catalog/001_create_products_up.sql
        db_table = "products"
"""

DJANGO_MIGRATION = """
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Product",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                    ("name", models.TextField()), ("price_cents", models.IntegerField())],
            options={"db_table": "products", "managed": False},
        ),
    ]
"""

DJANGO_TESTS = '''
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.test import TestCase, TransactionTestCase

from nixmig.models import MigrationRecord
from shop.models import Product

SQL_FILES = len(list(Path(settings.NIXMIG["MIGRATIONS_DIR"]).glob("*/*_up.sql")))


class ProductTest(TestCase):
    def test_insert_and_read(self):
        Product.objects.create(name="tea", price_cents=350)
        self.assertEqual(list(Product.objects.values_list("name", "price_cents")), [("tea", 350)])

    def test_check_constraint_from_the_sql_migration(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Product.objects.create(name="bad", price_cents=-1)


class WhereTest(TestCase):
    def test_schema_in_this_database(self):
        sys.stderr.write(f"db={connection.settings_dict['NAME']}\\n")
        self.assertEqual(Product.objects.count(), 0)
        self.assertEqual(MigrationRecord.objects.count(), SQL_FILES)


class FlushTest(TransactionTestCase):
    """Django flushes managed tables after each test; unmanaged ones (and nixmig's) are left alone."""

    def test_a_write(self):
        Product.objects.create(name="flush-probe", price_cents=1)
        Group.objects.create(name="flushed")

    def test_b_after_flush(self):
        self.assertFalse(Group.objects.exists())  # a managed table: flushed
        self.assertEqual(MigrationRecord.objects.count(), SQL_FILES)  # the tracking table: kept
        self.assertEqual(Product.objects.filter(name="flush-probe").count(), 1)  # unmanaged: kept
        Product.objects.filter(name="flush-probe").delete()
'''

PYTEST_TESTS = """
import pytest
from django.db import connection

from nixmig import api
from nixmig.models import MigrationRecord
from shop.models import Product


@pytest.mark.django_db
def test_insert_and_read():
    Product.objects.create(name="tea", price_cents=350)
    assert list(Product.objects.values_list("name", flat=True)) == ["tea"]


@pytest.mark.django_db(transaction=True)
def test_tracking_table_survives_flushes():
    assert MigrationRecord.objects.count() >= 1


def test_empty_database_for_migrations(nixmig_empty_db):
    with nixmig_empty_db.connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cursor.fetchone()[0] == 0
    result = api.migrate_up(database=nixmig_empty_db.alias)
    assert result.ids[0] == "catalog/001_create_products"
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


class Project:
    """The temp project and the server it tests against."""

    def __init__(self, path: Path, url: str):
        self.path = path
        self.url = url

    def copy(self, dest: Path) -> Project:
        shutil.copytree(self.path, dest)
        return Project(dest, self.url)

    def sql(self, name: str, up: str, down: str = "") -> None:
        write(self.path / "migrations_sql" / f"{name}_up.sql", up)
        write(self.path / "migrations_sql" / f"{name}_down.sql", down)

    def run(
        self, db: str, *args: str, timeout: float = 180, url: str | None = None, **env
    ) -> subprocess.CompletedProcess:
        environment = dict(
            os.environ,
            DATABASE_URL=url or self.url,
            SHOP_TEST_DB=PREFIX + db,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            **env,
        )
        environment.pop("DJANGO_SETTINGS_MODULE", None)
        environment.pop("PYTEST_XDIST_WORKER", None)
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def manage(self, db: str, *args: str, **env) -> subprocess.CompletedProcess:
        return self.run(db, "manage.py", *args, **env)

    def pytest(self, db: str, *args: str, **env) -> subprocess.CompletedProcess:
        return self.run(
            db, "-m", "pytest", "-p", "nixmig.pytest_plugin", "-p", "no:cacheprovider", *args, **env
        )


def server(query: str, params=None, database: str = "postgres"):
    """Run a query on the suite's server, in ``database``, in autocommit; return all rows."""
    import psycopg

    settings = connections["default"].settings_dict
    with psycopg.connect(
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname=database,
        autocommit=True,
    ) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def family(db: str) -> dict[str, bool]:
    """Return {name: datallowconn} of the templates and spare copies of test database ``db``."""
    prefix = testing.template_prefix(PREFIX + db)
    return dict(
        server(
            "SELECT datname, datallowconn FROM pg_database WHERE left(datname, length(%s)) = %s",
            [prefix, prefix],
        )
    )


def templates(db: str) -> list[str]:
    return sorted(n for n in family(db) if re.fullmatch(r".*_nixmig_[0-9a-f]{12}", n))


def ok(proc: subprocess.CompletedProcess) -> str:
    """Assert the run passed; return its stdout + stderr."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, django_db_blocker):
    path = tmp_path_factory.mktemp("shop")
    write(
        path / "manage.py",
        """
        import os
        import sys

        if __name__ == "__main__":
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    """,
    )
    write(path / "settings.py", SETTINGS)
    write(path / "pytest.ini", "[pytest]\nDJANGO_SETTINGS_MODULE = settings\npython_files = test_*.py\n")
    write(path / "shop" / "__init__.py", "")
    write(path / "shop" / "models.py", MODELS)
    write(path / "shop" / "migrations" / "__init__.py", "")
    write(path / "shop" / "migrations" / "0001_initial.py", DJANGO_MIGRATION)
    write(path / "shop" / "tests.py", DJANGO_TESTS)
    write(path / "test_products.py", PYTEST_TESTS)
    with django_db_blocker.unblock():
        url = _url(connections["default"].settings_dict, "postgres")
        shop = Project(path, url)
        shop.sql(
            "catalog/001_create_products",
            """
            CREATE TABLE products (
                id bigserial PRIMARY KEY,
                name text NOT NULL,
                price_cents integer NOT NULL CHECK (price_cents >= 0)
            );
        """,
            "DROP TABLE products;\n",
        )
        try:
            yield shop
        finally:
            for (name,) in server(
                "SELECT datname FROM pg_database WHERE left(datname, length(%s)) = %s", [PREFIX, PREFIX]
            ):
                server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- manage.py test -------------------------------------------------------------------------------


def test_manage_py_test_builds_the_template_once_then_takes_copies(project, tmp_path):
    shop = project.copy(tmp_path / "shop")
    first = ok(shop.manage("a", "test", "--noinput", SHOP_SPARES="1"))
    template = testing.template_prefix(PREFIX + "a")
    assert f"Building the SQL-schema template {template}" in first
    assert "Ran 5 tests" in first and "\nOK" in first
    [built] = templates("a")
    assert not family("a")[built]  # nobody can connect to the template
    second = ok(shop.manage("a", "test", "--noinput"))  # no spare made by this run
    assert "Building" not in second
    assert f"Took a ready copy of the SQL-schema template {built}" in second
    third = ok(shop.manage("a", "test", "--noinput", SHOP_SPARES="1"))  # makes a spare again
    assert f"Copied the SQL-schema template {built}" in third  # the spare was used up
    assert "Ran 5 tests" in second

    # a new SQL migration: a new template; the stale one and its spare copies are dropped
    shop.sql("catalog/002_add_sku", "ALTER TABLE products ADD COLUMN sku text;\n")
    fourth = ok(shop.manage("a", "test", "--noinput"))
    assert f"Dropped the stale template {built}." in fourth
    assert f"Dropped the stale template {built}_s" in fourth  # the spare made by the third run
    assert "Building the SQL-schema template" in fourth and "Ran 5 tests" in fourth
    [rebuilt] = templates("a")
    assert rebuilt != built
    assert all(name.startswith(rebuilt) for name in family("a"))


def test_parallel_workers_use_djangos_clones_with_the_schema(project):
    out = ok(project.manage("c", "test", "--noinput", "--parallel", "2"))
    assert "Cloning test database for alias 'default'" in out
    assert f"db={PREFIX}c_1" in out or f"db={PREFIX}c_2" in out
    assert "Ran 5 tests" in out


def test_migrate_false_still_applies_the_sql_tree(project):
    out = ok(project.manage("d", "test", "--noinput", SHOP_TEST_MIGRATE="0"))
    assert "Ran 5 tests" in out


# --- --keepdb -------------------------------------------------------------------------------------


def test_keepdb_applies_new_sql_migrations_and_stops_on_edited_ones(project, tmp_path):
    shop = project.copy(tmp_path / "shop")
    kept = PREFIX + "e"
    ok(shop.manage("e", "test", "--keepdb"))
    shop.sql(
        "catalog/002_add_sku",
        "ALTER TABLE products ADD COLUMN sku text;\n",
        "ALTER TABLE products DROP COLUMN sku;\n",
    )
    out = ok(shop.manage("e", "test", "--keepdb", "-v", "2"))
    assert "Using existing test database" in out
    assert "Applying catalog/002_add_sku... OK" in out
    assert "Ran 5 tests" in out
    assert server("SELECT module, name FROM migrations ORDER BY id", database=kept) == [
        ("catalog", "001_create_products"),
        ("catalog", "002_add_sku"),
    ]
    assert server(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'products' "
        "AND column_name = 'sku'",
        database=kept,
    ) == [("sku",)]

    # an applied file edited: the run stops with sqlmigrate_up's own message
    up = shop.path / "migrations_sql" / "catalog" / "001_create_products_up.sql"
    up.write_text(up.read_text() + "COMMENT ON TABLE products IS 'edited';\n")
    proc = shop.manage("e", "test", "--keepdb")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    direct = shop.manage(
        "e", "sqlmigrate_up", url=shop.url.rsplit("/", 1)[0] + f"/{kept}"
    )  # the kept database
    assert direct.returncode == 1
    message = direct.stderr.strip().removeprefix("CommandError: ")
    assert "catalog/001_create_products" in message and "edited" in message
    assert proc.stderr.startswith(
        "Using existing test database for alias 'default'...\nTestDatabaseError: The SQL "
        f"migrations could not be applied to the test database '{kept}' (alias "
        "'default'); no test ran. "
    )
    assert message in proc.stderr
    assert "NIXMIG['TEST_REBUILD_CHANGED'] = True" in proc.stderr
    rebuilt = ok(shop.manage("e", "test", "--keepdb", SHOP_REBUILD="1"))
    assert "An applied SQL migration was edited (NIXMIG['TEST_REBUILD_CHANGED']): re-creating" in rebuilt
    assert "Ran 5 tests" in rebuilt


# --- pytest-django and pytest-xdist ---------------------------------------------------------------


def test_pytest_django(project):
    out = ok(project.pytest("g", "-q"))
    assert "3 passed" in out


def test_pytest_xdist_workers_share_one_template(project):
    out = ok(project.pytest("h", "-n", "2", "--dist", "each", "-v", "-rA", SHOP_SPARES="1"))
    assert "6 passed" in out  # every test on each of the two workers
    assert out.count("Building the SQL-schema template") == 1, out
    assert out.count("Copied the SQL-schema template") + out.count("Took a ready copy") == 1, out
    assert len(templates("h")) == 1
    assert not any(name in family("h") for name in (f"{PREFIX}h_gw0", f"{PREFIX}h_gw1"))  # workers cleaned up


# --- errors and integrity -------------------------------------------------------------------------


def test_a_failing_sql_migration_stops_the_run_with_nixmigs_message(project, tmp_path):
    shop = project.copy(tmp_path / "shop")
    shop.sql("catalog/002_bad", "ALTER TABLE products ADD COLUMN sku text;\nINSERT INTO nope VALUES (1);\n")
    where = f"{shop.path / 'migrations_sql' / 'catalog' / '002_bad_up.sql'} line 2"
    proc = shop.manage("i", "test", "--noinput")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert (
        f"TestDatabaseError: The SQL migrations could not be applied to the test database '{PREFIX}i' (alias "
        f"'default'); no test ran. Applying catalog/002_bad failed at {where}: relation \"nope\" does not exist "
        "(SQLSTATE 42P01)."
    ) in proc.stderr
    assert "The test database was dropped; run the tests again once the SQL is fixed." in proc.stderr
    assert "sqlmigrate_up" not in proc.stderr  # advice for a deploy, not for a test database that is gone
    assert "It was rolled back and is not recorded" not in proc.stderr
    assert f"{PREFIX}i" not in {r[0] for r in server("SELECT datname FROM pg_database")}
    assert templates("i") == []  # no template from a failed build

    proc = shop.pytest("i", "-q")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"nixmig: The SQL migrations could not be applied to the test database '{PREFIX}i'" in proc.stdout
    assert f"failed at {where}" in proc.stdout and "SQLSTATE 42P01" in proc.stdout
    assert "Interrupted: nixmig: the test database could not get the SQL schema" in proc.stdout


def test_a_template_changed_after_it_was_built_is_rebuilt(project):
    ok(project.manage("j", "test", "--noinput"))
    [template] = templates("j")
    assert list(family("j")) == [template]  # no spare: the next run copies the template itself
    server(f'ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS true')
    server("CREATE TABLE sneaked_in (id int)", database=template)
    server(f'ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS false')
    out = ok(project.manage("j", "test", "--noinput"))
    assert f"The template {template} was changed after it was built; building it again..." in out
    assert "Ran 5 tests" in out
    assert templates("j") == [template] and not family("j")[template]


# --- in this process ------------------------------------------------------------------------------


def test_migrate_called_by_a_test_is_not_test_database_creation():
    assert testing.test_database_creation() is None


def test_xdist_workers_share_the_templates_name(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert testing.template_prefix("test_shop_gw3") == "test_shop_nixmig_"
    assert testing.template_prefix("test_shop_gw1") == "test_shop_gw1_nixmig_"  # not this worker's suffix
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert testing.template_prefix("test_shop_gw3") == "test_shop_gw3_nixmig_"


def test_long_test_database_names_give_valid_template_names():
    name = testing.template_name("test_" + "x" * 80, "a" * 64)
    assert len(name.encode()) + len("_s123456") <= 63
    assert name.endswith("_nixmig_aaaaaaaaaaaa")


def test_tree_hash_and_files_stamp_follow_every_edit(tree):
    tree.table_pair("auth/001_create_users", "users")
    first = testing.sql_key(api.load_tree(tree.path)), testing.files_stamp(tree.path)
    assert first == (testing.sql_key(api.load_tree(tree.path)), testing.files_stamp(tree.path))
    up = tree.path / "auth" / "001_create_users_up.sql"
    up.write_text(up.read_text().replace("users", "usrs_"))  # same size
    second = testing.sql_key(api.load_tree(tree.path)), testing.files_stamp(tree.path)
    assert second[0] != first[0] and second[1] != first[1]
    (tree.path / "auth" / "001_create_users_down.sql").write_text("DROP TABLE usrs_;\n")
    assert testing.sql_key(api.load_tree(tree.path)) == second[0]  # down files are not part of the schema
    assert testing.files_stamp(tree.path) != second[1]  # but the stamp is conservative


def test_djangos_flush_keeps_the_tracking_table(scratch_db, tree, settings):
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.table_pair("auth/001_create_users", "users")
    call_command("migrate", database=scratch_db.alias, verbosity=0)
    api.migrate_up(database=scratch_db.alias)
    scratch_db.sql("INSERT INTO users DEFAULT VALUES")
    scratch_db.sql("INSERT INTO auth_group (name) VALUES ('g')")
    flushed = scratch_db.connection.introspection.django_table_names(only_existing=True, include_views=False)
    assert "auth_group" in flushed and Recorder(scratch_db.connection).table not in flushed
    call_command("flush", database=scratch_db.alias, interactive=False, verbosity=0)
    assert scratch_db.value("SELECT count(*) FROM auth_group") == 0
    assert scratch_db.records() == [("auth", "001_create_users")]
    assert (
        scratch_db.value("SELECT count(*) FROM users") == 1
    )  # tables of the SQL tree are not Django's to flush


def test_empty_database_is_created_and_dropped(django_db_blocker):
    with django_db_blocker.unblock():
        with testing.empty_database() as db:
            with db.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT current_database(), (SELECT count(*) FROM pg_class WHERE relnamespace = "
                    "'public'::regnamespace)"
                )
                assert cursor.fetchone() == (db.name, 0)
            db.connection.close()
        assert server("SELECT 1 FROM pg_database WHERE datname = %s", [db.name]) == []
