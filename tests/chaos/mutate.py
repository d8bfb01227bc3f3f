"""Seeded mutations of the fault-injection tree: the bad input real trees contain.

Each mutation changes the files on disk and returns a description plus the ids of the
migrations whose files it touched (their effects can't be predicted any more).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

from .model import NT, Spec

KEYWORDS = ["CREATE", "TABLE", "INDEX", "FUNCTION", "SELECT", "DROP", "TYPE", "AS", "ALTER", "INSERT", "FROM"]
MISSPELT = {
    "CREATE": "CRAETE",
    "TABLE": "TABEL",
    "INDEX": "INDX",
    "FUNCTION": "FUNCTOIN",
    "SELECT": "SELCET",
    "DROP": "DORP",
    "TYPE": "TPYE",
    "AS": "SA",
    "ALTER": "ALTRE",
    "INSERT": "INSRET",
    "FROM": "FORM",
}


def _file(root: Path, spec: Spec, direction: str) -> Path:
    return root / spec.module / f"{spec.name}_{direction}.sql"


def _insert(data: bytes, rng: random.Random, piece: bytes) -> bytes:
    # Past the leading comment lines, so the bytes land inside SQL most of the time.
    start = data.find(b"\n", data.find(b"-- ") + 1) + 1 if data.startswith(b"--") else 0
    pos = rng.randint(min(start, len(data)), len(data))
    return data[:pos] + piece + data[pos:]


def truncate(root, spec, rng, direction):
    f = _file(root, spec, direction)
    data = f.read_bytes()
    f.write_bytes(data[: rng.randint(1, max(1, len(data) - 2))])
    return f"truncated {f.name}"


def invalid_utf8(root, spec, rng, direction):
    f = _file(root, spec, direction)
    f.write_bytes(_insert(f.read_bytes(), rng, rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80abc"])))
    return f"invalid UTF-8 in {f.name}"


def nul_byte(root, spec, rng, direction):
    f = _file(root, spec, direction)
    f.write_bytes(_insert(f.read_bytes(), rng, b"\x00"))
    return f"NUL byte in {f.name}"


def utf16(root, spec, rng, direction):
    f = _file(root, spec, direction)
    f.write_bytes(f.read_text(encoding="utf-8").encode("utf-16"))
    return f"{f.name} saved as UTF-16"


def unbalanced(root, spec, rng, direction):
    f = _file(root, spec, direction)
    piece = rng.choice([b"'", b"$$", b"$body$", b"/*", b'"', b"E'\\"])
    f.write_bytes(_insert(f.read_bytes(), rng, piece))
    return f"unbalanced {piece.decode()} in {f.name}"


def swap_keywords(root, spec, rng, direction):
    f = _file(root, spec, direction)
    text = f.read_text(encoding="utf-8")
    pairs = [m for m in re.finditer(r"\b([A-Z]{2,})(\s+)([A-Z]{2,})\b", text)]
    if not pairs:
        return misspell(root, spec, rng, direction)
    m = rng.choice(pairs)
    f.write_text(text[: m.start()] + m[3] + m[2] + m[1] + text[m.end() :], encoding="utf-8")
    return f"swapped '{m[1]} {m[3]}' in {f.name}"


def misspell(root, spec, rng, direction):
    f = _file(root, spec, direction)
    text = f.read_text(encoding="utf-8")
    hits = [m for m in re.finditer(r"\b(" + "|".join(KEYWORDS) + r")\b", text)]
    if not hits:
        return truncate(root, spec, rng, direction)
    m = rng.choice(hits)
    f.write_text(text[: m.start()] + MISSPELT[m[1]] + text[m.end() :], encoding="utf-8")
    return f"misspelt {m[1]} in {f.name}"


def conflicting_name(root, spec, rng, direction):
    kind = rng.choice(["same number other module", "same number same module", "up without down twin"])
    if kind == "same number other module":
        target = root / "zz_copy"
        target.mkdir(exist_ok=True)
        for d in ("up", "down"):
            shutil.copy(_file(root, spec, d), target / f"{spec.name}_{d}.sql")
    elif kind == "same number same module":
        for d in ("up", "down"):
            shutil.copy(_file(root, spec, d), root / spec.module / f"{spec.name[:3]}_other_{d}.sql")
    else:
        (root / spec.module / f"{spec.name}_down.sql").rename(root / spec.module / f"{spec.name}_dwn.sql")
    return f"conflicting names: {kind} ({spec.id})"


def malformed_name(root, spec, rng, direction):
    f = _file(root, spec, "up")
    n, rest = spec.name[:3], spec.name[4:]
    new = rng.choice(
        [
            f"{int(n)}_{rest}_up.sql",
            f"{n}-{rest}_up.sql",
            f"{n}_{rest}_upp.sql",
            f"{n}_{rest}.sql",
            f"{n}_{rest}_UP.sql",
            f"{n}_ {rest}_up.sql",
            f"{n}__up.sql",
            f"{n}_{rest}_up.sql.bak~",
        ]
    )
    f.rename(f.parent / new)
    return f"{f.name} renamed to {new}"


def drop_directive(root, spec, rng, direction):
    f = _file(root, spec, direction)
    text = f.read_text(encoding="utf-8")
    if NT not in text:
        text = text.replace(
            "CREATE TABLE", "CREATE INDEX CONCURRENTLY i_99_9 ON t_01_1 (id);\nCREATE TABLE", 1
        )
        f.write_text(text, encoding="utf-8")
        return f"CONCURRENTLY added to transactional {f.name}"
    f.write_text(text.replace(NT, ""), encoding="utf-8")
    return f"no-transaction directive removed from {f.name}"


def misspelt_directive(root, spec, rng, direction):
    f = _file(root, spec, direction)
    text = f.read_text(encoding="utf-8")
    f.write_text(
        ("-- nixmig:no-transation\n" + text.replace(NT, ""))
        if rng.random() < 0.5
        else ("-- nixmig:lock-timeout=soon\n" + text),
        encoding="utf-8",
    )
    return f"bad directive in {f.name}"


def top_level_rollback(root, spec, rng, direction):
    f = _file(root, spec, direction)
    f.write_text(
        f.read_text(encoding="utf-8")
        + rng.choice(["ROLLBACK;\n", "COMMIT;\nROLLBACK;\n", "PREPARE TRANSACTION 'x';\n"]),
        encoding="utf-8",
    )
    return f"top-level ROLLBACK in {f.name}"


def own_transaction(root, spec, rng, direction):
    f = _file(root, spec, direction)
    text = f.read_text(encoding="utf-8")
    f.write_text("BEGIN;\n" + text + "COMMIT;\n", encoding="utf-8")
    return f"{f.name} wrapped in BEGIN/COMMIT"


def empty_up(root, spec, rng, direction):
    f = _file(root, spec, "up")
    f.write_text(
        rng.choice(["", "\n\n", "-- TODO: write the migration\n", "/* nothing */\n", "   ;\n"]),
        encoding="utf-8",
    )
    return f"{f.name} emptied"


def crlf_bom(root, spec, rng, direction):
    f = _file(root, spec, direction)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    return f"{f.name} converted to CRLF with a BOM"


def runtime_error(root, spec, rng, direction):
    f = _file(root, spec, direction)
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    pos = rng.randint(2 if lines[0].startswith("--") else 0, len(lines))
    lines.insert(
        pos,
        rng.choice(
            [
                "SELECT * FROM nope_missing_table;\n",
                "DROP TABLE nope_missing_table;\n",
                "SELECT 1/0;\n",
                "CREATE TABLE t_01_1 (id int);\n",
            ]
        ),
    )
    f.write_text("".join(lines), encoding="utf-8")
    return f"failing statement inserted at line {pos + 1} of {f.name}"


def no_down(root, spec, rng, direction):
    _file(root, spec, "down").unlink()
    return f"{spec.name}_down.sql deleted (irreversible)"


def stray_file(root, spec, rng, direction):
    name = rng.choice(["notes.txt", "README.md", ".hidden_up.sql", "099_orphan_down.sql", "x_up.sql"])
    (root / spec.module / name).write_text("SELECT 1;\n", encoding="utf-8")
    return f"stray {spec.module}/{name}"


MUTATIONS = [
    truncate,
    invalid_utf8,
    nul_byte,
    utf16,
    unbalanced,
    swap_keywords,
    misspell,
    conflicting_name,
    malformed_name,
    drop_directive,
    misspelt_directive,
    top_level_rollback,
    own_transaction,
    empty_up,
    crlf_bom,
    runtime_error,
    no_down,
    stray_file,
]

UP_TOUCHING = {malformed_name, empty_up, conflicting_name}  # change the up file or the migration's identity
UP_UNTOUCHED = {no_down, stray_file}  # leave the up file's statements as they were


def mutate(root: Path, specs: list[Spec], rng: random.Random) -> tuple[list[str], set[str]]:
    """Apply one or two random mutations; return their descriptions and the ids they touched."""
    done, touched = [], set()
    for _ in range(1 if rng.random() < 0.7 else 2):
        fn = rng.choice(MUTATIONS)
        spec = rng.choice([s for s in specs if s.id not in touched] or specs)
        if fn is drop_directive:
            spec = rng.choice([s for s in specs if s.up_nt] if rng.random() < 0.7 else specs)
        direction = "up" if rng.random() < 0.75 else "down"
        if not _file(root, spec, "up").exists():
            continue
        try:
            done.append(fn(root, spec, rng, direction))
        except FileNotFoundError:
            continue
        if fn in UP_TOUCHING or (direction == "up" and fn not in UP_UNTOUCHED):
            touched.add(spec.id)
    return done, touched
