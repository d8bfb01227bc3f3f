"""The documentation: the MkDocs site builds with --strict, the README stays short, and every
'python manage.py ...' line of README.md and docs/ parses with the command's real argument parser."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from django.core.management import get_commands, load_command_class
from django.core.management.base import CommandError

README_MAX_LINES = 400
PAGES = sorted((ROOT / "docs").glob("*.md"))
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>"}


def command_lines(text: str) -> list[tuple[int, str]]:
    """Return (line number, command line) of every 'python manage.py ...' in ``text``.

    Quoted or backticked commands end at their closing quote (they may wrap onto the next line);
    others (in code blocks) end at the end of their line.
    """
    found = []
    for match in re.finditer(r"python manage\.py ", text):
        start = match.start()
        opener = text[start - 1] if start else ""
        if opener in "`'\"":
            end = text.find(opener, match.end())
            command = text[start:end]
        else:
            end = text.find("\n", start)
            command = text[start : end if end != -1 else len(text)]
        found.append((text.count("\n", 0, start) + 1, " ".join(command.split())))
    return found


def arguments(command: str) -> list[str]:
    """Split a command line like a shell, without comments and anything after a redirection or pipe."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = []
    for word in lexer:
        if word in SHELL_OPERATORS:
            break
        words.append(word)
    return words[2:]  # drop 'python manage.py'


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for path in [ROOT / "README.md", *PAGES]:
        for line, command in command_lines(path.read_text(encoding="utf-8")):
            commands.append((f"{path.relative_to(ROOT)}:{line}", command))
    return commands


def test_the_readme_fits_in_400_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into a page of docs/"


def test_the_docs_build_with_strict(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "safety" / "index.html").exists()


def test_every_page_of_docs_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert [page.name for page in PAGES if f": {page.name}" not in nav] == []


def test_the_readme_and_docs_show_many_manage_py_commands():
    commands = {arguments(command)[0] for _, command in documented_commands()}
    assert {
        "sqlmigrate_up",
        "sqlmigrate_down",
        "sqlmigrate_status",
        "sqlmigrate_new",
        "sqlmigrate_lint",
    } <= commands


@pytest.mark.parametrize("where, command", documented_commands())
def test_every_documented_manage_py_command_parses(where, command):
    name, *args = arguments(command)
    app = get_commands().get(name)
    assert app is not None, f"{where}: {command!r} names no command"
    parser = load_command_class(app, name).create_parser("manage.py", name)
    try:
        parser.parse_args(args)
    except CommandError as exc:
        pytest.fail(f"{where}: {command!r} does not parse: {exc}")


def test_command_lines_are_found_in_code_quotes_and_backticks():
    text = (
        "```console\n$ python manage.py sqlmigrate_up --to auth/001_a   # comment\n```\n"
        "Run `python manage.py sqlmigrate_verify --drift\n--json` or 'python manage.py sqlmigrate_status'.\n"
    )
    assert command_lines(text) == [
        (2, "python manage.py sqlmigrate_up --to auth/001_a # comment"),
        (4, "python manage.py sqlmigrate_verify --drift --json"),
        (5, "python manage.py sqlmigrate_status"),
    ]
    assert arguments("python manage.py sqlmigrate_verify --json > verify.json") == [
        "sqlmigrate_verify",
        "--json",
    ]
    assert arguments(command_lines(text)[0][1]) == ["sqlmigrate_up", "--to", "auth/001_a"]


def test_a_wrong_option_in_the_docs_would_fail():
    name, *args = arguments("python manage.py sqlmigrate_up --no-such-option")
    parser = load_command_class("nixmig", name).create_parser("manage.py", name)
    with pytest.raises(CommandError, match="unrecognized arguments: --no-such-option"):
        parser.parse_args(args)


def test_docs_speak_to_users_only():
    """No issue numbers or notes about how the work was organised in README.md or docs/."""
    pattern = re.compile(
        r"\bissue \d+|\bissue #\d+|other engineers|busy sessions|shared with (?:three|five)", re.I
    )
    hits = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in [ROOT / "README.md", *PAGES]
        for m in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert hits == []


def test_nixopus_is_named_only_on_its_page_and_where_it_is_measured():
    allowed = {"nixopus.md", "index.md"}
    named = [
        p.name for p in PAGES if "nixopus" in p.read_text(encoding="utf-8").lower() and p.name not in allowed
    ]
    assert named == []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [line for line in readme.splitlines() if "Nixopus" in line] == [
        "| [Coming from Nixopus](docs/nixopus.md) | taking over a database the Nixopus Go migrator migrated |"
    ]


def test_the_screenshots_are_in_docs():
    for name in ("admin.png", "docs-home.png"):
        path = Path(ROOT / "docs" / name)
        assert path.stat().st_size > 10_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
