"""The package's metadata says what is tested, and the version is one value everywhere."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import nixmig

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_has_one_source_and_status_json_reports_it(scratch_db, tree):
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nixmig.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", nixmig.__version__)
    tree.table_pair("core/001_a", "a")
    out, err, rc = scratch_db.run("sqlmigrate_status", dir=str(tree), json=True)
    assert rc == 0, err
    assert json.loads(out)["nixmig_version"] == nixmig.__version__


def test_the_metadata_claims_exactly_the_tested_django_and_python():
    project = PYPROJECT["project"]
    classifiers = project["classifiers"]
    assert [c for c in classifiers if c.startswith("Framework :: Django ::")] == [
        "Framework :: Django :: 5.2"
    ]
    assert [c for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)] == [
        "Programming Language :: Python :: 3.11"
    ]
    assert project["requires-python"] == ">=3.11"
    assert "Django>=5.2,<5.3" in project["dependencies"]
    assert "Django>=5.2,<5.3" in (ROOT / "requirements.txt").read_text().splitlines()


def test_the_wheel_carries_templates_and_the_type_marker():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["nixmig"]
    assert "templates/**/*" in data and "py.typed" in data
    assert (ROOT / "nixmig" / "py.typed").exists()
    assert list((ROOT / "nixmig" / "templates").rglob("*.html"))
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {
        "nixmig.pytest_plugin": "nixmig.pytest_plugin"
    }
