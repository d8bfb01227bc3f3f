"""The checksum cache: an unchanged tree is not read again, and no edit goes unseen.

Pure (no database). The racy margin is two seconds in use; tests that need files older than it
shrink it to 50 ms and wait that long instead.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from nixmig import tree as tree_module
from nixmig.tree import load_tree

SQL = "CREATE TABLE users (id int);\n"
EDITED = "CREATE TABLE userz (id int);\n"  # same size


def _cache(tree) -> str:
    return str(tree.path / "__pycache__")


def _shape(t):
    return (
        [
            (m.id, m.number, m.checksum, m.up.relpath, m.up.directives, m.down.relpath if m.down else None)
            for m in t.migrations
        ],
        t.problems,
    )


@pytest.fixture
def short_margin(monkeypatch):
    """Files older than 50 ms count as settled (instead of two seconds)."""
    monkeypatch.setattr(tree_module, "RACY_NS", 50_000_000)

    def settle():
        time.sleep(0.06)

    return settle


def _sample(tree) -> None:
    tree.pair("auth/001_users", SQL, "DROP TABLE users;\n")
    tree.write(
        "auth/002_index_up.sql",
        "-- nixmig:no-transaction\n-- nixmig:lock-timeout=5s\nCREATE INDEX CONCURRENTLY i ON users (id);\n",
    )
    tree.pair("integrations/github/003_repos", "CREATE TABLE repos (id int);\n", "")
    tree.write("rbac/004_roles_down.sql", "DROP TABLE roles;\n")  # an orphan down file: a warning


def test_a_tree_read_through_the_cache_equals_one_read_without_it(tree, short_margin):
    _sample(tree)
    short_margin()
    plain = load_tree(tree.path)
    first = load_tree(tree.path, checksum_cache=_cache(tree))
    second = load_tree(tree.path, checksum_cache=_cache(tree))
    assert first.files_read == 3 and second.files_read == 0
    assert _shape(first) == _shape(plain) == _shape(second)
    assert second.migrations[1].up.directives.no_transaction
    assert second.migrations[0].up.text == SQL  # read when asked for
    assert [p.code for p in second.problems] == [p.code for p in plain.problems]


def test_an_edit_that_keeps_size_and_mtime_is_seen_within_the_racy_window(tree):
    path = tree.write("auth/001_users_up.sql", SQL)
    before = os.stat(path)
    first = load_tree(tree.path, checksum_cache=_cache(tree))
    path.write_text(EDITED)  # right after the read: within the timestamps' granularity
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -d back
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    second = load_tree(tree.path, checksum_cache=_cache(tree))
    assert second.migrations[0].checksum != first.migrations[0].checksum
    assert second.files_read == 1  # a file changed within the margin was never vouched for


def test_the_racy_window_holds_even_where_an_edit_changes_no_timestamp(tree, monkeypatch):
    """A file system with coarse timestamps: the edit leaves size, both times and inode as they were."""
    path = tree.write("auth/001_users_up.sql", SQL)
    frozen = os.stat(path)
    real_stat = os.stat
    monkeypatch.setattr(tree_module, "_stat", lambda p: frozen if os.fspath(p) == str(path) else real_stat(p))
    first = load_tree(tree.path, checksum_cache=_cache(tree))
    path.write_text(EDITED)
    second = load_tree(tree.path, checksum_cache=_cache(tree))
    assert second.migrations[0].checksum != first.migrations[0].checksum


def test_outside_the_racy_window_only_an_edit_that_restores_every_timestamp_is_missed(
    tree, short_margin, monkeypatch
):
    """The documented limit: size, both times and inode unchanged after an edit (a clock set back)."""
    path = tree.write("auth/001_users_up.sql", SQL)
    short_margin()
    first = load_tree(tree.path, checksum_cache=_cache(tree))
    before = os.stat(path)
    path.write_text(EDITED)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    seen = load_tree(tree.path, checksum_cache=_cache(tree))  # the change time gave it away
    assert seen.migrations[0].checksum != first.migrations[0].checksum
    short_margin()
    load_tree(tree.path, checksum_cache=_cache(tree))  # vouched for again, as edited
    path.write_text(SQL)
    frozen = os.stat(path)
    real_stat = os.stat
    monkeypatch.setattr(tree_module, "_stat", lambda p: frozen if os.fspath(p) == str(path) else real_stat(p))
    short_margin()
    load_tree(tree.path, checksum_cache=_cache(tree))
    path.write_text(EDITED)  # an edit no timestamp shows
    missed = load_tree(tree.path, checksum_cache=_cache(tree))
    assert missed.migrations[0].checksum == first.migrations[0].checksum  # documented: not seen


@pytest.mark.parametrize(
    "change",
    ["edit", "add", "remove_down", "rename", "new_module", "remove_module", "touch"],
)
def test_every_change_to_the_tree_shows_after_a_cached_read(tree, short_margin, change):
    _sample(tree)
    short_margin()
    load_tree(tree.path, checksum_cache=_cache(tree))
    assert load_tree(tree.path, checksum_cache=_cache(tree)).files_read == 0
    if change == "edit":
        (tree.path / "auth/001_users_up.sql").write_text(EDITED)
    elif change == "add":
        tree.pair("auth/005_more", "CREATE TABLE more (id int);\n")
    elif change == "remove_down":
        (tree.path / "auth/001_users_down.sql").unlink()
    elif change == "rename":
        os.rename(tree.path / "auth/001_users_up.sql", tree.path / "auth/001_people_up.sql")
    elif change == "new_module":
        tree.pair("zeta/006_z", "CREATE TABLE z (id int);\n")
    elif change == "remove_module":
        for f in (tree.path / "integrations/github").iterdir():
            f.unlink()
        (tree.path / "integrations/github").rmdir()
    elif change == "touch":
        os.utime(tree.path / "auth/001_users_up.sql")
    cached = load_tree(tree.path, checksum_cache=_cache(tree))
    assert _shape(cached) == _shape(load_tree(tree.path))


def test_a_damaged_or_foreign_cache_is_ignored(tree, short_margin):
    _sample(tree)
    short_margin()
    load_tree(tree.path, checksum_cache=_cache(tree))
    (cache_file,) = (tree.path / "__pycache__").glob("nixmig-checksums-*.json")
    data = json.loads(cache_file.read_text())
    for entry in data["files"].values():
        entry[4] = "0" * 64  # wrong checksums, but the directory named is another one
    data["directory"] = "/elsewhere"
    cache_file.write_text(json.dumps(data))
    assert _shape(load_tree(tree.path, checksum_cache=_cache(tree))) == _shape(load_tree(tree.path))
    for text in ("", "{", "[1, 2]", '{"format": 1, "directory": 3}', "\x00\xff"):
        cache_file.write_text(text)
        assert _shape(load_tree(tree.path, checksum_cache=_cache(tree))) == _shape(load_tree(tree.path))


def test_a_read_only_tree_gets_no_cache_written(tree, short_margin):
    _sample(tree)
    short_margin()
    mode = tree.path.stat().st_mode
    tree.path.chmod(0o555)
    try:
        loaded = load_tree(tree.path, checksum_cache=_cache(tree))
    finally:
        tree.path.chmod(mode)
    assert len(loaded.migrations) == 3
    assert not (tree.path / "__pycache__").exists()


def test_the_cache_does_not_carry_allow_empty_over(tree, short_margin):
    tree.pair("auth/001_users", SQL)
    short_margin()
    load_tree(tree.path, checksum_cache=_cache(tree))
    loaded = load_tree(tree.path, allow_empty=True, checksum_cache=_cache(tree))
    assert loaded.migrations[0].up.directives.allow_empty
    assert not load_tree(tree.path, checksum_cache=_cache(tree)).migrations[0].up.directives.allow_empty


def test_the_api_reads_through_the_cache_unless_it_is_off(tree, settings, short_margin):
    from nixmig import api

    _sample(tree)
    short_margin()
    settings.NIXMIG = {"MIGRATIONS_DIR": str(tree.path), "CHECKSUM_CACHE": False}
    api.load_tree()
    assert not (tree.path / "__pycache__").exists()
    settings.NIXMIG = {"MIGRATIONS_DIR": str(tree.path)}
    api.load_tree()
    assert api.load_tree().files_read == 0
    assert list((tree.path / "__pycache__").glob("nixmig-checksums-*.json"))


def test_a_file_added_within_the_racy_window_shows_even_where_the_folder_keeps_its_times(
    tree, monkeypatch, short_margin
):
    """A file system with coarse timestamps: adding a file leaves the folder's times as they were."""
    tree.pair("auth/001_users", SQL)
    short_margin()  # the up file is settled; the folder changes now
    folder = tree.path / "auth"
    (folder / "notes.txt").write_text("x")
    (folder / "notes.txt").unlink()
    frozen = {str(folder): os.stat(folder), str(tree.path): os.stat(tree.path)}
    real_stat = os.stat
    monkeypatch.setattr(tree_module, "_stat", lambda p: frozen.get(os.fspath(p)) or real_stat(p))
    load_tree(tree.path, checksum_cache=_cache(tree))
    tree.pair("auth/002_teams", "CREATE TABLE teams (id int);\n")
    loaded = load_tree(tree.path, checksum_cache=_cache(tree))
    assert [m.id for m in loaded.migrations] == ["auth/001_users", "auth/002_teams"]


def test_a_cached_file_over_a_lowered_size_limit_is_read_and_refused(tree, short_margin):
    _sample(tree)
    short_margin()
    for _ in range(2):  # the second read leaves the snapshot
        load_tree(tree.path, checksum_cache=_cache(tree))
        short_margin()
    assert load_tree(tree.path, checksum_cache=_cache(tree)).files_read == 0
    limited = load_tree(tree.path, checksum_cache=_cache(tree), max_file_bytes=10)
    assert limited.errors and limited.files_read == 3
    assert _shape(limited) == _shape(load_tree(tree.path, max_file_bytes=10))


def test_writing_the_cache_leaves_the_test_templates_stamp_of_the_tree_alone(tree, short_margin):
    from nixmig.testing import files_stamp

    _sample(tree)
    short_margin()
    before = files_stamp(tree.path)
    load_tree(tree.path, checksum_cache=_cache(tree))
    assert list((tree.path / "__pycache__").iterdir())
    assert files_stamp(tree.path) == before
    (tree.path / "auth/001_users_up.sql").write_text(EDITED)
    assert files_stamp(tree.path) != before
