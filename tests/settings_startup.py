"""Settings for subprocesses that load the WSGI application with NIXMIG['APPLY_ON_STARTUP'] on."""

import os

from project.settings import *  # noqa: F401,F403
from project.settings import NIXMIG

NIXMIG = {
    **NIXMIG,
    "APPLY_ON_STARTUP": True,
    "MIGRATIONS_DIR": os.environ["NIXMIG_TEST_MIGRATIONS_DIR"],
    "LOCK_WAIT": 120,
}
