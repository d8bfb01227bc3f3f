"""Celery is an optional extra: without it nixmig imports, rolls out on threads, and --executor celery says what to install."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import sys
sys.modules["celery"] = None  # as if Celery were not installed: importing it raises ImportError
import django
django.setup()
import nixmig.api, nixmig.rollout, nixmig.targets, nixmig.management.base  # noqa: E401
from django.core.management import call_command
from django.core.management.base import CommandError
try:
    call_command("sqlmigrate_up", executor="celery", database=["default"])
except CommandError as exc:
    print(exc)
"""


def test_nixmig_imports_without_celery_and_the_celery_executor_says_what_to_install():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("--executor celery needs Celery (")
    assert "pip install 'nixmig[celery]'" in done.stdout
