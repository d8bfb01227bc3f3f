"""Settings for runserver subprocesses: INSTALLED_APPS with nixmig first or last (NIXMIG_TEST_APP_ORDER)."""

import os

from project.settings import *  # noqa: F401,F403
from project.settings import INSTALLED_APPS, NIXMIG

_others = [app for app in INSTALLED_APPS if app != "nixmig"]
INSTALLED_APPS = (
    ["nixmig", *_others] if os.environ["NIXMIG_TEST_APP_ORDER"] == "first" else [*_others, "nixmig"]
) + ["devserver"]  # tests/devserver: a 'runserver_plus' command, as django-extensions has
NIXMIG = {**NIXMIG, "MIGRATIONS_DIR": os.environ["NIXMIG_TEST_MIGRATIONS_DIR"]}
