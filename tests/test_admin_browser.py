"""End to end in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Logs in, opens the changelist and a detail page of the tracking table on a live server,
and saves screenshots under tests/artifacts/ (git-ignored). Skipped, with the reason,
only where the browser or Selenium is not installed (.ci/run installs both).
"""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT
from django.core.management import call_command
from django.db import connection

from nixmig import verify
from nixmig.tree import load_tree

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
CHANGELIST = "/admin/nixmig/migrationrecord/"


def _require_browser() -> None:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -r requirements.txt)")
    if not CHROMIUM:
        missing.append("chromium (apt-get install chromium)")
    if not CHROMEDRIVER:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        pytest.skip(f"headless Chromium can't run here: missing {', '.join(missing)}")


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hash the admin's password cheaply (before admin_user exists): the default costs half a second a check."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def applied_tree(transactional_db, tree, settings):
    """Two of three migrations applied to the default test database by sqlmigrate_up; dropped afterwards."""
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    tree.pair(
        "auth/001_create_users",
        "-- people who log in\nCREATE TABLE users (\n    id serial PRIMARY KEY,\n"
        "    email text NOT NULL UNIQUE,\n    role text NOT NULL DEFAULT 'member'\n);\n",
        "DROP TABLE users;\n",
    )
    tree.table_pair("orgs/002_create_orgs", "orgs")
    tree.table_pair("auth/003_create_tokens", "tokens")
    try:
        call_command("sqlmigrate_up", to="orgs/002_create_orgs", verbosity=0)
        yield tree
    finally:
        with connection.cursor() as cursor:  # the test database outlives this test: leave it as found
            cursor.execute("DROP TABLE IF EXISTS users, orgs, tokens, migrations, migrations_progress")


def _wait(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_an_operator_logs_in_and_reads_the_applied_and_pending_migrations(
    browser, live_server, admin_user, applied_tree
):
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{live_server.url}/admin/login/?next={CHANGELIST}")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    _wait(browser, "#result_list")
    rows = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#result_list th.field-migration_id a")]
    assert rows == ["orgs/002_create_orgs", "auth/001_create_users"]
    pending = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#nixmig-pending li")]
    assert pending == ["auth/003_create_tokens"]
    checksums = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#result_list td.field-checksum")]
    assert checksums == ["ok", "ok"]
    # The admin stylesheet loaded: the header is laid out, not unstyled text.
    assert browser.find_element(By.ID, "header").value_of_css_property("display") == "flex"
    browser.save_screenshot(str(ARTIFACTS / "admin_changelist.png"))

    browser.find_element(By.LINK_TEXT, "auth/001_create_users").click()
    _wait(browser, "#nixmig-sql-files")
    up, down = browser.find_elements(By.CSS_SELECTOR, "pre.nixmig-sql")
    assert up.text.startswith("-- people who log in\nCREATE TABLE users (")
    assert down.text == "DROP TABLE users;"
    keyword = up.find_element(By.CSS_SELECTOR, ".sql-keyword")
    assert keyword.text == "CREATE"
    assert keyword.value_of_css_property("font-weight") == "700"  # highlighted, by the page's own stylesheet
    assert not browser.find_elements(By.NAME, "_save")  # read-only
    browser.save_screenshot(str(ARTIFACTS / "admin_detail.png"))
    assert (ARTIFACTS / "admin_changelist.png").stat().st_size > 10_000


@pytest.fixture
def long_ids(transactional_db, tree, settings):
    """Migrations with long ids in nested modules, applied and verified (the verify column has results)."""
    settings.NIXMIG = {**settings.NIXMIG, "MIGRATIONS_DIR": str(tree.path)}
    names = [
        "integrations/github/001_create_github_connectors_and_installations",
        "notifications/002_create_notification_preferences_per_channel",
        "integrations/gitlab/003_create_gitlab_connectors_and_webhooks",
    ]
    for i, migration in enumerate(names):
        tree.table_pair(migration, f"t{i}")
    try:
        call_command("sqlmigrate_up", verbosity=0)
        migrations = load_tree(tree.path).migrations  # results as sqlmigrate_verify stores them
        verdicts = [verify.EXACT, verify.NOT_EXACT, verify.EXACT]
        verify.VerifyStore(connection).save(
            [verify.MigrationResult(m, result) for m, result in zip(migrations, verdicts, strict=True)]
        )
        yield names
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TABLE IF EXISTS t0, t1, t2, migrations, migrations_progress, migrations_verify"
            )


def test_the_changelist_fits_1280_pixels_with_the_navigation_open(browser, live_server, admin_user, long_ids):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 1000)
    browser.get(f"{live_server.url}/admin/login/?next={CHANGELIST}")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser, "#result_list")
    assert browser.find_element(By.ID, "nav-sidebar").is_displayed()
    widths = browser.execute_script(
        """
        const results = document.querySelector('#changelist .results');
        const verify = document.querySelector('#result_list thead th.column-verify_result');
        return {viewport: document.documentElement.clientWidth, page: document.documentElement.scrollWidth,
                box: results.clientWidth, table: results.scrollWidth,
                verify_right: verify.getBoundingClientRect().right};
        """
    )
    assert widths["table"] <= widths["box"], widths  # no column hidden behind a scroll bar
    assert widths["page"] <= widths["viewport"], widths
    assert widths["verify_right"] <= widths["viewport"], widths
    verified = [
        td.text for td in browser.find_elements(By.CSS_SELECTOR, "#result_list td.field-verify_result")
    ]
    assert verified == ["exact", "not exact", "exact"]
    ids = [
        a.text.replace("\n", "")
        for a in browser.find_elements(By.CSS_SELECTOR, "#result_list th.field-migration_id a")
    ]
    assert ids == long_ids[::-1]
