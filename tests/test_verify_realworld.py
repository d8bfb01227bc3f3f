"""sqlmigrate_verify on real trees of public projects (../shared/corpora/realworld), imported with
sqlmigrate_import: it runs to the end of each tree.

Skipped when the corpora are absent. Harbor is the tree that needs something from outside it:
golang-migrate's own ``schema_migrations`` table, which its migration 0030 alters.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT

REALWORLD = ROOT.parent / "shared" / "corpora" / "realworld"

# What golang-migrate makes before it runs the first migration of a tree.
GOLANG_MIGRATE_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);\n"


def imported(scratch_db, tmp_path: Path, name: str, tool: str) -> Path:
    source = REALWORLD / name
    if not source.is_dir():
        pytest.skip(
            f"the real-world corpus is not at {source} (it lives in the shared folder beside the repository)"
        )
    tree = tmp_path / "migrations_sql"
    out, err, rc = scratch_db.run("sqlmigrate_import", str(source), tool=tool, module=name, dir=str(tree))
    assert rc == 0, err
    return tree


def verified(scratch_db, tree: Path, **options) -> dict:
    out, err, rc = scratch_db.run("sqlmigrate_verify", dir=str(tree), json=True, **options)
    assert out.strip(), err
    return json.loads(out)


def test_harbor_verifies_to_its_end_with_golang_migrates_table_as_setup(scratch_db, tmp_path):
    tree = imported(scratch_db, tmp_path, "harbor", "golang-migrate")
    setup = tmp_path / "golang_migrate.sql"
    setup.write_text(GOLANG_MIGRATE_TABLE)
    report = verified(scratch_db, tree, setup_sql=[str(setup)])
    assert report["counts"]["irreversible"] == 39  # harbor ships no down files
    assert report["counts"]["failed"] == report["counts"]["not run"] == 0
    without = verified(scratch_db, tree)  # without the setup: 0030 fails, the run goes on
    results = [(m["name"], m["result"]) for m in without["migrations"]]
    assert results[9] == ("00010_0030_2_0_0_schema", "failed")
    later = Counter(result for _, result in results[10:])
    # what needs 0030's tables is not blamed ("not run"); the rest is still checked
    assert set(later) == {"not run", "irreversible"} and later["irreversible"] >= 5


def test_openfga_round_trips_are_exact(scratch_db, tmp_path):
    tree = imported(scratch_db, tmp_path, "openfga", "goose")
    report = verified(scratch_db, tree)
    assert report["counts"]["exact"] == 6 and report["ok"] is True
