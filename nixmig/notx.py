"""No-transaction files: which statements ran, and whether a partly run file can resume.

Pure: no database. The executor sends the queries; these functions decide and describe.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .plan import Entry
from .reports import ran

if TYPE_CHECKING:
    from .recorder import Recorder
    from .sqltext import Prepared


def terminated(text: str) -> str:
    """Return a statement with its ';' (on a line of its own if its last line ends in a -- comment)."""
    text = text.strip()
    return text + ("\n;" if "--" in text.rsplit("\n", 1)[-1] else ";")


def statement_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def resume_problem(entry: Entry, prep: Prepared | None, direction: str) -> str | None:
    """Return why a partly run migration can't resume from ``prep``, or None when it can."""
    progress = entry.progress
    if progress is None or progress.direction != direction or prep is None:
        return None
    k = progress.statements_done
    kind = "up" if direction == "up" else "down"
    if not prep.no_transaction:
        return (
            f"{entry.id}: {ran(k) if k else 'part of statement 1'} of its {kind} file ran as a no-transaction "
            f"file, but "
            f"{prep.file.relpath} no longer says '-- nixmig:no-transaction'; run as one transaction it would "
            "run them again. Put the directive back to resume."
        )
    n = len(progress.statement_hashes)  # the statements that ran, and one in flight if any
    hashes = tuple(statement_hash(prep.body[s.start : s.end]) for s in prep.analysis.statements[:n])
    if len(hashes) < n or hashes != tuple(progress.statement_hashes):
        what = (
            f"{ran(k)} of {prep.file.relpath} ran, and {'has' if k == 1 else 'have'}"
            if k
            else f"statement 1 of {prep.file.relpath} was running when its runner stopped, and has"
        )
        return (
            f"{entry.id}: {what} been edited since (or the file now has fewer statements), so nixmig can't "
            "tell what is applied. Restore the file as it was, or bring the database in line by hand and "
            "settle it as sqlmigrate_status describes."
        )
    return None


def hashes(prep: Prepared) -> list[str]:
    return [statement_hash(prep.body[s.start : s.end]) for s in prep.analysis.statements]


def queries(
    recorder: Recorder,
    settings: str,
    finish: str,
    direction: str,
    entry: Entry,
    prep: Prepared,
    start: int = 0,
) -> list[tuple[str, int]]:
    """Return (query, statement index) pairs that run statements ``start``.. of a no-transaction file.

    Every statement that can run in a transaction is sent as ``BEGIN; <statement>; <progress>;
    COMMIT;``, so it and the progress row that says it ran commit together; the last one sends
    ``finish`` (the record written or removed, the progress cleared) instead. A statement
    PostgreSQL refuses in a transaction (CREATE INDEX CONCURRENTLY, VACUUM, ...) is sent alone,
    marked in flight just before and done just after. Index -1 marks queries that are not a
    statement of the file.
    """
    m = entry.files
    statements = prep.analysis.statements
    texts = [prep.body[s.start : s.end] for s in statements]
    done = hashes(prep)
    total = len(texts)
    out: list[tuple[str, int]] = [(settings, -1)]
    for k in range(start, total):
        after = (
            finish
            if k == total - 1
            else recorder.progress_sql(m, direction, prep.file.checksum, done[: k + 1], total)
        )
        if statements[k].no_transaction:
            flight = recorder.progress_sql(m, direction, prep.file.checksum, done[: k + 1], total, k)
            out += [
                (f"BEGIN; {flight}; COMMIT;", -1),
                (terminated(texts[k]), k),
                (f"BEGIN; {after}; COMMIT;", -1),
            ]
        else:
            out.append((f"BEGIN;\n{texts[k]}\n;\n{after}; COMMIT;", k))
    if start >= total:  # every statement ran before; only the record was missing
        out.append((f"BEGIN; {finish}; COMMIT;", -1))
    out.append(
        (
            "RESET lock_timeout; RESET statement_timeout;"
            + (" RESET search_path;" if recorder.schema else ""),
            -1,
        )
    )
    return out


def failed_progress_sql(
    recorder: Recorder, entry: Entry, direction: str, prep: Prepared, ran_: int, error: str
) -> str:
    """SQL that leaves exactly statements 1..ran_ as progress, with the error of the next one."""
    m = entry.files
    if ran_ == 0:
        return recorder.clear_progress_sql(m)  # nothing ran: no progress (an in-flight mark is void)
    return (
        recorder.progress_sql(m, direction, prep.file.checksum, hashes(prep)[:ran_], len(hashes(prep)))
        + "; "
        + recorder.progress_error_sql(m, direction, error)
    )
