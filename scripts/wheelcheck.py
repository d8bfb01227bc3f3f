"""Check that nixmig works when installed from its wheel alone, the way a user installs it.

Builds the sdist and the wheel (``python -m build``), checks them (``twine check``), installs the
wheel into a fresh venv outside the checkout, creates a project with ``django-admin startproject``,
adds nixmig, and runs sqlmigrate_new / up / status / down, the admin changelist, and a
pytest-django test against it. Templates and the pytest plugin must come from the installed
wheel, never from this checkout (checked by their paths).

Database: DATABASE_URL when set, else this checkout's embedded PostgreSQL (started on demand).
A database of its own is created for the check and dropped at the end.

Run from the checkout: ``.venv/bin/python scripts/wheelcheck.py`` (exit 0 when every step passed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step(title: str) -> None:
    print(f"==> {title}", flush=True)


def run(argv: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure print its output and stop the check with exit 1."""
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"wheelcheck: {' '.join(map(str, argv))} exited {result.returncode}")
    return result.stdout


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"wheelcheck failed: {what}")


def server_settings() -> dict:
    """Django settings of the server to use: DATABASE_URL's, or the embedded PostgreSQL's."""
    if os.environ.get("DATABASE_URL"):
        import dj_database_url

        return dict(dj_database_url.config(conn_max_age=0))
    from project import embedded

    return dict(embedded.database_settings("postgres"))


def admin_connection(settings: dict):
    import psycopg

    return psycopg.connect(
        host=settings.get("HOST") or None,
        port=settings.get("PORT") or None,
        user=settings.get("USER") or None,
        password=settings.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )


SETTINGS_TAIL = """

# Added by nixmig's wheel check.
INSTALLED_APPS += ["nixmig"]
DATABASES = {{"default": {database!r}}}
NIXMIG = {{"MIGRATIONS_DIR": BASE_DIR / "migrations_sql"}}
ALLOWED_HOSTS = ["testserver", "localhost"]
"""

ADMIN_CHECK = """
import nixmig
from django.contrib.auth.models import User
from django.template.loader import get_template
from django.test import Client

assert "site-packages" in nixmig.__file__, nixmig.__file__
origin = get_template("admin/nixmig/migrationrecord/change_list.html").origin.name
assert origin.startswith(str(__import__("pathlib").Path(nixmig.__file__).parent)), origin
User.objects.create_superuser("admin", "admin@example.com", "pw")
client = Client()
client.force_login(User.objects.get(username="admin"))
page = client.get("/admin/nixmig/migrationrecord/")
assert page.status_code == 200, page.status_code
body = page.content.decode()
assert "catalog/001_create_products" in body, body[:2000]
print("admin changelist: 200, shows catalog/001_create_products; template from", origin)
"""

MODEL_TEST = """
import pytest
from django.db import connection


@pytest.mark.django_db
def test_products_table_exists_in_the_test_database():
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO products (name) VALUES ('kettle') RETURNING id")
        assert cursor.fetchone()[0] == 1


def test_plugin_comes_from_the_wheel(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("nixmig.pytest_plugin")
    assert plugin is not None and "site-packages" in plugin.__file__, plugin
"""


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nixmig-wheelcheck-"))
    settings = server_settings()
    dbname = f"nixmig_wheelcheck_{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        step("python -m build (sdist and wheel)")
        dist = work / "dist"
        run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=work)
        wheels = sorted(dist.glob("nixmig-*.whl"))
        sdists = sorted(dist.glob("nixmig-*.tar.gz"))
        check(len(wheels) == 1 and len(sdists) == 1, f"build made {os.listdir(dist)}")
        step("twine check")
        print(run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists], cwd=work), end="")

        step("a fresh venv with the wheel only")
        venv = work / "venv"
        run([sys.executable, "-m", "venv", venv], cwd=work)
        py = venv / "bin" / "python"
        run(
            [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"{wheels[0]}[binary]", "pytest", "pytest-django"],
            cwd=work,
        )  # fmt: skip

        step("django-admin startproject shop")
        run([venv / "bin" / "django-admin", "startproject", "shop"], cwd=work)
        project = work / "shop"
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            **{k: settings.get(k) or "" for k in ("USER", "PASSWORD", "HOST", "PORT")},
        }
        with open(project / "shop" / "settings.py", "a") as f:
            f.write(SETTINGS_TAIL.format(database=database))
        with admin_connection(settings) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')

        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
        env["DJANGO_SETTINGS_MODULE"] = "shop.settings"

        def manage(*args: str) -> str:
            return run([py, "manage.py", *args], cwd=project, env=env)

        step("sqlmigrate_new, up, status, down")
        (project / "migrations_sql").mkdir(exist_ok=True)
        print(manage("sqlmigrate_new", "catalog", "create_products"), end="")
        folder = project / "migrations_sql" / "catalog"
        (folder / "001_create_products_up.sql").write_text(
            "CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL);\n"
        )
        (folder / "001_create_products_down.sql").write_text("DROP TABLE products;\n")
        print(manage("sqlmigrate_up"), end="")
        status = manage("sqlmigrate_status")
        check("[X] 001_create_products" in status, f"status after up:\n{status}")
        print(manage("migrate", "--verbosity", "0"), end="")

        step("the admin changelist, templates from the wheel")
        print(manage("shell", "-c", ADMIN_CHECK), end="")

        step("a pytest-django model test, plugin from the wheel")
        (project / "tests").mkdir()
        (project / "tests" / "test_products.py").write_text(textwrap.dedent(MODEL_TEST))
        print(
            run(
                [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ds=shop.settings", "tests"],
                cwd=project,
                env=env,
            ).splitlines()[-1]
        )

        print(manage("sqlmigrate_down"), end="")
        status = manage("sqlmigrate_status")
        check("[ ] 001_create_products" in status, f"status after down:\n{status}")
        print(f"wheelcheck: every step passed in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        try:
            with admin_connection(settings) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
                conn.execute(f'DROP DATABASE IF EXISTS "test_{dbname}" WITH (FORCE)')
        except Exception as exc:  # the check's own result matters more than its clean-up
            print(f"wheelcheck: could not drop {dbname}: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
