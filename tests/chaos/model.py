"""The fault-injection tree and the invariant it is checked against.

Every statement of every migration creates (up) or drops (down) distinctively named objects
(``t_NN_k`` tables, ``i_NN_k`` indexes, ``e_NN_k`` enum types and their labels, ``f_NN_k``
functions; NN = the migration's number, k = the statement), so "the effects of statements
1..k" is one catalog query. Padding statements (``SELECT pg_sleep``) have no effect; they
spread the run over about a second so random kill instants land everywhere.

The invariant, after the runner's backend is gone:
1. each migration is recorded at most once;
2. recorded, no DOWN progress row: every effect of its up file present (and valid);
3. unrecorded, no UP progress row: no effect present;
4. UP progress row of k: exactly the effects of up statements 1..k present;
5. DOWN progress row of k: the effects dropped by down statements 1..k gone, the rest present.
An UP progress row only for an unrecorded migration, a DOWN one only for a recorded one,
never both, and statements_done >= 1 -- or 0 with statement 1 "in flight" (the row holds one
statement hash more than statements_done: the engine marks a statement that can't run in a
transaction as sent before sending it), and only such a statement may be in flight. In 4 and 5 the effect of statement k+1 may be in any state
-- absent, present, or an INVALID index -- only when that statement can't run in a transaction
(CREATE/DROP INDEX CONCURRENTLY, DETACH ... CONCURRENTLY): the engine can't write progress
atomically with it. Up, only while the row marks it in flight (a settled failure removed or
finished what it left); down, also under a settled row (a failed DROP INDEX CONCURRENTLY may
leave its index INVALID). Every index of a recorded migration is valid, and no ``_ccnew``/``_ccold``
index nor partition pending detach is left, except by the statement in flight (``leaves``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

NT = "-- nixmig:no-transaction\n"
BLOCKER_GAP = 0.3  # seconds between 011's tables and its concurrent statements
OBJECT_RE = re.compile(r"\b[tief]_(\d\d)_\d+")


@dataclass(frozen=True)
class Stmt:
    sql: str
    effects: tuple[str, ...] = ()  # up: objects it creates; down: objects it drops
    nontx: bool = False  # can't run inside a transaction block (CIC, DROP INDEX CONCURRENTLY)
    removes: tuple[str, ...] = ()  # up: objects of earlier statements it takes away (a detached partition)
    leaves: tuple[str, ...] = ()  # what it may leave only while in flight (a _ccnew index, a pending detach)


@dataclass(frozen=True)
class Spec:
    """One migration of the test tree: its statements and their effects."""

    module: str
    name: str
    up: tuple[Stmt, ...]
    down: tuple[Stmt, ...]
    up_nt: bool = False
    down_nt: bool = False

    @property
    def id(self) -> str:
        return f"{self.module}/{self.name}"

    @property
    def number(self) -> str:
        return self.name[1:3]  # "008_x" -> "08"

    @property
    def effects(self) -> list[str]:
        """What the applied migration holds: what its up statements create, less what later ones take away."""
        removed = {e for s in self.up for e in s.removes}
        return [e for s in self.up for e in s.effects if e not in removed]

    def text(self, direction: str) -> str:
        stmts, nt = (self.up, self.up_nt) if direction == "up" else (self.down, self.down_nt)
        head = NT if nt else ""
        return (
            head + f"-- {self.id} {direction}\n" + "".join(s.sql.rstrip().rstrip(";") + ";\n" for s in stmts)
        )


def _sleep(seconds: float) -> Stmt:
    return Stmt(f"SELECT pg_sleep({seconds:.3f})")


def _table(name: str, rows: int = 0) -> Stmt:
    if rows:
        return Stmt(
            f"CREATE TABLE {name} AS SELECT g AS id, g % 97 AS v, md5(g::text) AS w "
            f"FROM generate_series(1, {rows}) AS g",
            (f"table:{name}",),
        )
    return Stmt(f"CREATE TABLE {name} (id int PRIMARY KEY, note text DEFAULT 'a;b')", (f"table:{name}",))


def _enum(name: str, *labels: str) -> Stmt:
    quoted = ", ".join(f"'{label}'" for label in labels)
    return Stmt(
        f"CREATE TYPE {name} AS ENUM ({quoted})", (f"type:{name}", *(f"enum:{name}={x}" for x in labels))
    )


def _func(name: str, plpgsql: bool = False) -> Stmt:
    if plpgsql:
        body = "$body$\nBEGIN\n  PERFORM 1; -- a ';' and BEGIN inside the body\n  RETURN 2;\nEND;\n$body$"
        return Stmt(f"CREATE FUNCTION {name}() RETURNS int LANGUAGE plpgsql AS {body}", (f"func:{name}",))
    return Stmt(f"CREATE FUNCTION {name}() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$", (f"func:{name}",))


def _drop(kind: str, name: str, *also: str) -> Stmt:
    sql = {
        "table": f"DROP TABLE {name}",
        "type": f"DROP TYPE {name}",
        "func": f"DROP FUNCTION {name}()",
        "index": f"DROP INDEX CONCURRENTLY {name}",
    }[kind]
    return Stmt(sql, (f"{kind}:{name}", *also), nontx=kind == "index")


def base_tree(pad: float = 0.02, rows: int = 50000) -> list[Spec]:
    """Ten migrations in six modules; ``pad`` scales the sleeps, ``rows`` the indexed tables."""
    P = pad
    cic_table = lambda n: _table(n, rows)  # noqa: E731
    return [
        Spec(
            "core",
            "001_base",
            (_table("t_01_1"), _enum("e_01_2", "a", "b"), _sleep(3 * P), _func("f_01_4")),
            (
                _drop("func", "f_01_4"),
                _drop("type", "e_01_2", "enum:e_01_2=a", "enum:e_01_2=b"),
                _drop("table", "t_01_1"),
            ),
        ),
        Spec(
            "core",
            "002_nt_tables",
            (
                _table("t_02_1"),
                _sleep(2 * P),
                _table("t_02_3"),
                _func("f_02_4"),
                _sleep(2 * P),
                Stmt("CREATE TABLE t_02_6 AS SELECT g FROM generate_series(1, 1000) AS g", ("table:t_02_6",)),
            ),
            (
                _drop("table", "t_02_6"),
                _drop("func", "f_02_4"),
                _drop("table", "t_02_3"),
                _drop("table", "t_02_1"),
            ),
            up_nt=True,
        ),
        Spec(
            "billing",
            "003_tx_pad",
            (
                _table("t_03_1"),
                Stmt("INSERT INTO t_03_1 (id) SELECT generate_series(1, 500)"),
                _sleep(4 * P),
                Stmt("CREATE INDEX i_03_4 ON t_03_1 (note)", ("index:i_03_4",)),
            ),
            (Stmt("DROP TABLE t_03_1", ("table:t_03_1", "index:i_03_4")),),
        ),
        Spec(
            "billing",
            "004_enum_values",
            (
                _enum("e_04_1", "a"),
                Stmt("ALTER TYPE e_04_1 ADD VALUE 'b'", ("enum:e_04_1=b",)),
                _sleep(P),
                Stmt("ALTER TYPE e_04_1 ADD VALUE 'c'", ("enum:e_04_1=c",)),
            ),
            (_drop("type", "e_04_1", "enum:e_04_1=a", "enum:e_04_1=b", "enum:e_04_1=c"),),
            up_nt=True,
        ),
        Spec(
            "teams",
            "005_tx",
            (_table("t_05_1"), _sleep(3 * P), _table("t_05_3")),
            (_drop("table", "t_05_3"), _drop("table", "t_05_1")),
        ),
        Spec(
            "teams",
            "006_cic",
            (
                cic_table("t_06_1"),
                Stmt("CREATE INDEX CONCURRENTLY i_06_2 ON t_06_1 (v)", ("index:i_06_2",), True),
                _sleep(P),
                Stmt("CREATE INDEX CONCURRENTLY i_06_4 ON t_06_1 (w)", ("index:i_06_4",), True),
            ),
            (_drop("index", "i_06_4"), _drop("index", "i_06_2"), _drop("table", "t_06_1")),
            up_nt=True,
            down_nt=True,
        ),
        Spec(
            "audit",
            "007_tx_plpgsql",
            (_table("t_07_1"), _func("f_07_2", plpgsql=True), _sleep(3 * P)),
            (_drop("func", "f_07_2"), _drop("table", "t_07_1")),
        ),
        Spec(
            "audit",
            "008_nt_multi",
            (_table("t_08_1"), _sleep(P), _table("t_08_3"), _enum("e_08_4", "q"), _sleep(P), _func("f_08_6")),
            (
                _drop("func", "f_08_6"),
                _sleep(P),
                _drop("type", "e_08_4", "enum:e_08_4=q"),
                _drop("table", "t_08_3"),
                _sleep(P),
                _drop("table", "t_08_1"),
            ),
            up_nt=True,
            down_nt=True,
        ),
        Spec(
            "search",
            "009_cic_both_ways",
            (
                cic_table("t_09_1"),
                Stmt("CREATE INDEX CONCURRENTLY i_09_2 ON t_09_1 (w)", ("index:i_09_2",), True),
                Stmt("CREATE UNIQUE INDEX CONCURRENTLY i_09_3 ON t_09_1 (id)", ("index:i_09_3",), True),
            ),
            (_drop("index", "i_09_3"), _sleep(P), _drop("index", "i_09_2"), _drop("table", "t_09_1")),
            up_nt=True,
            down_nt=True,
        ),
        Spec(
            "search",
            "010_tx_last",
            (_table("t_10_1"), _sleep(3 * P), _table("t_10_3")),
            (_drop("table", "t_10_3"), _sleep(2 * P), _drop("table", "t_10_1")),
        ),
        Spec(
            "ops",
            "011_notx_kinds",
            (
                cic_table("t_11_1"),
                Stmt("CREATE INDEX i_11_2 ON t_11_1 (w)", ("index:i_11_2",)),
                Stmt("CREATE TABLE t_11_3 (at int NOT NULL) PARTITION BY RANGE (at)", ("table:t_11_3",)),
                Stmt(
                    "CREATE TABLE t_11_4 PARTITION OF t_11_3 FOR VALUES FROM (0) TO (100)",
                    ("table:t_11_4", "part:t_11_4"),
                ),
                _sleep(BLOCKER_GAP),  # a blocker session takes its lock here (test_lock_blocker)
                Stmt("CREATE INDEX CONCURRENTLY ON t_11_1 (v)", ("index:t_11_1_v_idx",), True),
                Stmt(
                    "REINDEX INDEX CONCURRENTLY i_11_2",
                    (),
                    True,
                    leaves=("index:i_11_2_ccnew", "index:i_11_2_ccold"),
                ),
                Stmt(
                    "ALTER TABLE t_11_3 DETACH PARTITION t_11_4 CONCURRENTLY",
                    (),
                    True,
                    removes=("part:t_11_4",),
                    leaves=("pending:t_11_4",),
                ),
            ),
            (
                Stmt("DROP TABLE t_11_4", ("table:t_11_4",)),
                Stmt("DROP TABLE t_11_3", ("table:t_11_3",)),
                Stmt("DROP TABLE t_11_1", ("table:t_11_1", "index:i_11_2", "index:t_11_1_v_idx")),
            ),
            up_nt=True,
        ),
    ]


def write_tree(specs: list[Spec], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in specs:
        (root / s.module).mkdir(exist_ok=True)
        for direction in ("up", "down"):
            (root / s.module / f"{s.name}_{direction}.sql").write_text(s.text(direction), encoding="utf-8")
    return root


# -- reading the database -----------------------------------------------------------------

CATALOG_SQL = r"""
SELECT 'table:' || relname, true FROM pg_class
 WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') AND relname ~ '^t_\d\d_\d+$'
UNION ALL
SELECT 'index:' || c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relnamespace = 'public'::regnamespace
   AND c.relname ~ '^(i_\d\d_\d+(_cc(new|old)\d*)?|t_\d\d_\d+_\w+_idx\d*)$'
UNION ALL
SELECT 'part:' || relname, true FROM pg_class
 WHERE relnamespace = 'public'::regnamespace AND relispartition AND relname ~ '^t_\d\d_\d+$'
UNION ALL
SELECT 'pending:' || c.relname, true FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
 WHERE h.inhdetachpending AND c.relname ~ '^t_\d\d_\d+$'
UNION ALL
SELECT 'type:' || typname, true FROM pg_type
 WHERE typnamespace = 'public'::regnamespace AND typtype = 'e' AND typname ~ '^e_\d\d_\d+$'
UNION ALL
SELECT 'enum:' || t.typname || '=' || e.enumlabel, true FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
 WHERE t.typnamespace = 'public'::regnamespace AND t.typname ~ '^e_\d\d_\d+$'
UNION ALL
SELECT 'func:' || proname, true FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND proname ~ '^f_\d\d_\d+$'
"""


@dataclass
class Snapshot:
    """What the database holds: tracking rows, progress rows, and the test objects (name -> valid)."""

    records: dict[str, int] = field(default_factory=dict)  # id -> number of rows
    progress: list[dict] = field(default_factory=list)
    objects: dict[str, bool] = field(default_factory=dict)

    def progress_of(self, mid: str, direction: str) -> dict | None:
        for p in self.progress:
            if p["id"] == mid and p["direction"] == direction:
                return p
        return None


def snapshot(conn) -> Snapshot:
    snap = Snapshot()
    has = conn.execute(
        "SELECT to_regclass('public.migrations') IS NOT NULL, "
        "to_regclass('public.migrations_progress') IS NOT NULL"
    ).fetchone()
    if has[0]:
        for module, name, n in conn.execute(
            "SELECT module, name, count(*) FROM migrations GROUP BY module, name"
        ).fetchall():
            snap.records[f"{module}/{name}" if module else name] = n
    if has[1]:
        for module, name, direction, done, total, hashes in conn.execute(
            "SELECT module, name, direction, statements_done, total, cardinality(statement_hashes) "
            "FROM migrations_progress"
        ).fetchall():
            snap.progress.append(
                {
                    "id": f"{module}/{name}",
                    "direction": direction,
                    "done": done,
                    "total": total,
                    "in_flight": hashes > done,
                }
            )
    snap.objects = {name: valid for name, valid in conn.execute(CATALOG_SQL).fetchall()}
    return snap


# -- the invariant --------------------------------------------------------------------------


def _expect(
    spec: Spec, direction: str, k: int, nt: bool, in_flight: bool = False
) -> tuple[set[str], set[str], set[str]]:
    """Return (must be present and valid, must be absent, may be in any state) after k statements.

    Up, statement k+1 may have left something only while it is marked in flight: a failure that
    was settled removed (or finished and counted) what it left. Down, a DROP INDEX CONCURRENTLY
    that failed may leave its index INVALID under a settled row (status lists it as a leftover).
    """
    everything = set(spec.effects)
    if direction == "up":
        stmts = spec.up
        created = {e for s in stmts for e in s.effects}
        present = {e for s in stmts[:k] for e in s.effects} - {e for s in stmts[:k] for e in s.removes}
        loose = set()
        if nt and in_flight and k < len(stmts) and stmts[k].nontx:
            loose = set(stmts[k].effects) | set(stmts[k].removes) | set(stmts[k].leaves)
        # An in-flight DETACH may have taken away a partition an earlier statement made: loose, not present.
        return present - loose, created - present - loose, loose
    stmts = spec.down
    gone = {e for s in stmts[:k] for e in s.effects}
    loose = set(stmts[k].effects) if nt and k < len(stmts) and stmts[k].nontx else set()
    return everything - gone - loose, gone, loose


def check(specs: list[Spec], snap: Snapshot, *, unknown: frozenset[str] = frozenset()) -> list[str]:
    """Return every violation of the invariant (empty when it holds).

    ``unknown``: ids of migrations whose files were mutated, so their effects can't be predicted;
    for those only the record count, the progress rules and "unrecorded leaves nothing" are checked.
    """
    problems = []
    known_numbers = set()
    for spec in specs:
        mid = spec.id
        known_numbers.add(spec.number)
        n = snap.records.get(mid, 0)
        up, down = snap.progress_of(mid, "up"), snap.progress_of(mid, "down")
        if n > 1:
            problems.append(f"{mid}: recorded {n} times")
        if up and down:
            problems.append(f"{mid}: has both an up and a down progress row")
        for p in (up, down):
            if p and p["done"] < 1 and not p.get("in_flight"):
                problems.append(
                    f"{mid}: {p['direction']} progress row with statements_done = {p['done']} (< 1) "
                    "and no statement in flight"
                )
            if p and p.get("in_flight") and mid not in unknown:
                stmts = spec.up if p["direction"] == "up" else spec.down
                if p["done"] >= len(stmts) or not stmts[p["done"]].nontx:
                    problems.append(
                        f"{mid}: {p['direction']} progress row marks statement {p['done'] + 1} in "
                        "flight, but that statement can run in a transaction (it should commit with "
                        "its progress row)"
                    )
        if n and up:
            problems.append(
                f"{mid}: recorded as applied but has an up progress row ({up['done']}/{up['total']})"
            )
        if not n and down:
            problems.append(
                f"{mid}: not recorded but has a down progress row ({down['done']}/{down['total']})"
            )
        mine = {
            o: v
            for o, v in snap.objects.items()
            if OBJECT_RE.search(o) and OBJECT_RE.search(o)[1] == spec.number
        }
        if mid in unknown:
            # A mutation may have copied or renamed the file: then a migration of another id but the
            # same number made these objects, and it is checked by its record, not here.
            twins = [r for r in snap.records if r != mid and _number(r) == int(spec.number)]
            if not n and not up and mine and not twins:
                problems.append(f"{mid} (mutated): not recorded, no progress, yet left {sorted(mine)}")
            continue
        if n:
            k = down["done"] if down else 0
            present, absent, loose = _expect(spec, "down", k, spec.down_nt)
            state = f"recorded, down progress {k}/{len(spec.down)}" if down else "recorded"
        else:
            k = up["done"] if up else 0
            present, absent, loose = _expect(spec, "up", k, spec.up_nt, bool(up and up.get("in_flight")))
            state = f"not recorded, up progress {k}/{len(spec.up)}" if up else "not recorded"
        missing = sorted(e for e in present if e not in mine)
        invalid = sorted(e for e in present if mine.get(e) is False)
        extra = sorted(e for e in absent if e in mine)
        stray = sorted(o for o in mine if o not in present | absent | loose)
        for label, items in (
            ("missing", missing),
            ("invalid", invalid),
            ("present but should not be", extra),
            ("unexpected objects", stray),
        ):
            if items:
                problems.append(f"{mid} ({state}): {label}: {', '.join(items)}")
    return problems


def _number(mid: str) -> int | None:
    m = re.match(r"(\d+)_", mid.rsplit("/", 1)[-1])
    return int(m[1]) if m else None


def final_problems(specs: list[Spec], snap: Snapshot) -> list[str]:
    """Return what keeps this database from 'every migration applied once, all effects, no progress'."""
    problems = [
        f"{s.id}: recorded {snap.records.get(s.id, 0)} times, expected once"
        for s in specs
        if snap.records.get(s.id, 0) != 1
    ]
    problems += [f"progress row left: {p}" for p in snap.progress]
    wanted = {e for s in specs for e in s.effects}
    problems += [f"missing effect {e}" for e in sorted(wanted - set(snap.objects))]
    problems += [f"invalid index {o}" for o, v in sorted(snap.objects.items()) if not v]
    problems += [f"unexpected object {o}" for o in sorted(set(snap.objects) - wanted)]
    return problems


def landed_in(query: str | None) -> str | None:
    """Return the migration number a running statement belongs to (from the object names it mentions)."""
    m = OBJECT_RE.search(query or "")
    return m[1] if m else None
