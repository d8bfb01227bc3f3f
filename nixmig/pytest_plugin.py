"""pytest plugin (entry point ``pytest11``; or ``-p nixmig.pytest_plugin``): nixmig with pytest-django.

pytest-django creates its test databases with Django's ``create_test_db``, so they get the
SQL schema without this plugin (see ``nixmig.testing``). The plugin adds:

* the ``nixmig_empty_db`` fixture: an empty database beside the test database, registered
  as a Django alias, for tests that run migrations themselves;
* a clean stop: when the SQL migrations fail while the test database is set up, the test
  reports nixmig's message (file, line, SQLSTATE) instead of a traceback, and the run stops.
"""

from __future__ import annotations

import pytest

from nixmig import testing


@pytest.fixture
def nixmig_empty_db(request):
    """Yield an empty database (``.alias``, ``.name``, ``.connection``) on the test server; drop it afterwards."""
    blocker = request.getfixturevalue("django_db_blocker")
    request.getfixturevalue("django_db_setup")  # the server settings of the test run
    with blocker.unblock(), testing.empty_database() as database:
        yield database


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Report a failed SQL set-up as nixmig's one-paragraph message and stop the run (xdist workers too)."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(testing.TestDatabaseError):
        report.longrepr = f"nixmig: {call.excinfo.value}"
        item.session.shouldstop = (
            "nixmig: the test database could not get the SQL schema (see the error above)"
        )
    return report
