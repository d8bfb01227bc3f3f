"""Redraw the documentation's screenshots with headless Chromium at 1,280 px wide.

    .venv/bin/python scripts/screenshots.py

writes docs/admin.png (the admin's changelist of the sample tree, three migrations pending, at 1,280 px
with the navigation sidebar open) and
docs/docs-home.png (this documentation's landing page, built with mkdocs into a temporary
folder). Needs Debian's chromium and chromium-driver and the demo's database (DATABASE_URL,
else the embedded PostgreSQL); it creates and drops its own database there.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
WIDTH = 1280
DB_NAME = "nixmig_screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    options.add_argument(f"--window-size={WIDTH},900")
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='nixmig-chromium-')}")
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)


def _project_env() -> dict[str, str]:
    """The environment of a manage.py process on the screenshots' own database."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="project.settings")
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        env["DATABASE_URL"] = url[: url.rindex("/") + 1] + DB_NAME
    else:
        env["NIXMIG_DB_NAME"] = DB_NAME
    return env


def _server_sql(sql: str) -> None:
    """Run one statement on the maintenance database of the project's server."""
    code = (
        "import django; django.setup(); from django.db import connection; "
        "connection.ensure_connection(); connection.connection.autocommit = True; "
        f"connection.cursor().execute({sql!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="project.settings"),
    )


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True, env=env)


def _wait_for(url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2)
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def admin_screenshot(driver) -> None:
    from selenium.webdriver.common.by import By

    env = _project_env()
    if not os.environ.get("DATABASE_URL"):
        subprocess.run([sys.executable, "-m", "project.embedded", "start"], cwd=ROOT, check=True)
    _server_sql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    _server_sql(f"CREATE DATABASE {DB_NAME}")
    server = None
    try:
        _manage("migrate", "-v", "0", env=env)
        _manage("sqlmigrate_up", "--to", "dashboard/011_create_dashboard_widgets", "-v", "0", env=env)
        # the verify column's results (exit code 1 when a round trip is not exact: still shown)
        subprocess.run(
            [
                sys.executable,
                "manage.py",
                "sqlmigrate_verify",
                "--to",
                "dashboard/011_create_dashboard_widgets",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        create_user = (
            "from django.contrib.auth.models import User; "
            "User.objects.create_superuser('admin', 'admin@example.com', 'password')"
        )
        _manage("shell", "-c", create_user, env=env)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/admin/login/")
        driver.get(f"{base}/admin/login/?next=/admin/nixmig/migrationrecord/")
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys("password")
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        driver.find_element(By.ID, "result_list")
        driver.set_window_size(WIDTH, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WIDTH, min(height, 1400))
        driver.save_screenshot(str(DOCS / "admin.png"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        _server_sql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def docs_screenshot(driver) -> None:
    with tempfile.TemporaryDirectory() as site:
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
            cwd=ROOT,
            check=True,
        )
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=site)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            driver.set_window_size(WIDTH, 900)
            driver.get(f"http://127.0.0.1:{httpd.server_address[1]}/")
            time.sleep(1)
            driver.save_screenshot(str(DOCS / "docs-home.png"))
        finally:
            httpd.shutdown()


def main() -> None:
    driver = _browser()
    try:
        admin_screenshot(driver)
        docs_screenshot(driver)
    finally:
        driver.quit()
    print(f"wrote {DOCS / 'admin.png'} and {DOCS / 'docs-home.png'}")


if __name__ == "__main__":
    main()
