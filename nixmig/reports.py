"""What a failed or partly done migration says. Each message is built once, and says the truth
about the record and the progress: what ran, what is recorded, and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exceptions import MigrationFailed
from .plan import Entry

if TYPE_CHECKING:
    from .plan import RunOptions
    from .sqltext import Prepared


def ran(k: int) -> str:
    return "statement 1" if k == 1 else f"statements 1..{k}"


def partial_truth(direction: str, k: int, total: int) -> str:
    """What a failure at statement k+1 of a no-transaction file leaves, said exactly."""
    kind = "up" if direction == "up" else "down"
    if direction == "up":
        if k == 0:
            return (
                f"It failed at statement 1 of {total} (no-transaction file): no statement of it ran, and it "
                "is not recorded."
            )
        return (
            f"It failed at statement {k + 1} of {total} of its no-transaction {kind} file: {ran(k)} "
            f"ran and {'is' if k == 1 else 'are'} kept as progress, so it is partly applied and not recorded. "
            "Fix the cause and run "
            f"sqlmigrate_up again to resume at statement {k + 1} (statements that ran are not run again); "
            "sqlmigrate_status lists the other ways out."
        )
    if k == 0:
        return (
            f"It failed at statement 1 of {total} of its no-transaction down file: no statement of it ran, "
            "and it stays recorded as applied."
        )
    return (
        f"It failed at statement {k + 1} of {total} of its no-transaction down file: {ran(k)} ran "
        f"and {'is' if k == 1 else 'are'} kept as progress, so it is partly rolled back and stays recorded "
        "as applied; sqlmigrate_up "
        f"refuses until this is settled. Fix the down file and run sqlmigrate_down again to resume at "
        f"statement {k + 1}; sqlmigrate_status lists the other ways out."
    )


def failure(
    entry: Entry,
    prep: Prepared | None,
    line: int | None,
    text: str,
    sqlstate: str | None,
    done,
    options: RunOptions,
    truth: str,
    *,
    fix: bool = True,
) -> MigrationFailed:
    where = f"{prep.file.path}" + (f" line {line}" if line else "") if prep else "its tracking row"
    done = list(done)
    if not done:
        kept = "Nothing else ran in this run." if not options.atomic else ""
    else:
        n = len(done)
        ids = (
            done[0].id
            if n == 1
            else f"{done[0].id} and {done[1].id}"
            if n == 2
            else f"the first {done[0].id}, the last {done[-1].id}; sqlmigrate_status lists them all"
        )
        kept = (
            f"{n} migration(s) {options.done_verb} before it in this run stay so ({ids}); later ones were "
            "not attempted."
        )
    advice = f"Fix the SQL and run sqlmigrate_{options.direction} again." if fix else ""
    message = " ".join(
        part
        for part in (f"{options.verb} {entry.id} failed at {where}: {text.rstrip('.')}.", truth, kept, advice)
        if part
    )
    return MigrationFailed(
        message,
        migration_id=entry.id,
        sqlstate=sqlstate,
        applied=tuple(e.id for e in done),
        file=str(prep.file.path) if prep else None,
        line=line,
    )
