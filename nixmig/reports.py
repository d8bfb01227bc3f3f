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


def partial_truth(
    direction: str, k: int, total: int, *, cause: str | None = None, cleaned: bool = False
) -> str:
    """What a failure at statement k+1 of a no-transaction file leaves, said exactly.

    Statement k+1 left nothing: it failed before it changed anything, or nixmig removed what it left
    (``cleaned``). With a ``cause`` (a lock timeout, a lost connection) the SQL needs no fix.
    """
    kind = "up" if direction == "up" else "down"
    nothing = "nothing of it is left" if cleaned or cause else "no statement of it ran"
    if k == 0:
        where = "(no-transaction file)" if direction == "up" else "of its no-transaction down file"
        outcome = "it is not recorded" if direction == "up" else "it stays recorded as applied"
        return f"It failed at statement 1 of {total} {where}: {nothing}, and {outcome}."
    kept = f"{ran(k)} ran and {'is' if k == 1 else 'are'} kept as progress"
    if direction == "up":
        fix = "" if cause else "Fix the cause and run sqlmigrate_up again to resume"
        return (
            f"It failed at statement {k + 1} of {total} of its no-transaction {kind} file: {kept}, so it is "
            f"partly applied and not recorded. {fix or 'The next sqlmigrate_up resumes'} at statement {k + 1} "
            "(statements that ran are not run again); sqlmigrate_status lists the other ways out."
        )
    fix = "" if cause else "Fix the down file and run sqlmigrate_down again to resume"
    return (
        f"It failed at statement {k + 1} of {total} of its no-transaction down file: {kept}, so it is partly "
        "rolled back and stays recorded as applied; sqlmigrate_up "
        f"refuses until this is settled. {fix or 'The next sqlmigrate_down resumes'} at statement {k + 1}; "
        "sqlmigrate_status lists the other ways out."
    )


def _what_happened(cause: str | None, k: int, total: int, kind: str, attempts: int) -> str:
    where = f"statement {k + 1} of {total} of its no-transaction {kind} file"
    if cause == "lock timeout":
        return (
            f"{where[0].upper()}{where[1:]} could not take its lock within the lock timeout in {attempts} "
            "attempt(s): another session holds a conflicting lock, and the statement may have run in part."
        )
    if cause == "terminated":
        return f"The server terminated the connection while {where} ran: the statement may have run."
    if cause == "lost":
        return f"The connection was lost while {where} ran: the statement may have run."
    if cause == "cancelled":
        return f"{where[0].upper()}{where[1:]} was cancelled (statement timeout or a cancel request): it may have run in part."
    return ""


def cause_advice(cause: str | None, direction: str) -> str:
    """What to do after a statement stopped for ``cause`` (not its SQL): never 'fix the SQL'."""
    again = f"sqlmigrate_{direction}"
    if cause == "lock timeout":
        return (
            f"Run {again} again when the session holding the lock is done (pg_locks and pg_stat_activity "
            "show it), or give the file a longer '-- nixmig:lock-timeout=...'."
        )
    if cause in ("terminated", "lost"):
        return f"Run {again} again once the database answers."
    if cause == "cancelled":
        return f"Run {again} again, with a longer '-- nixmig:statement-timeout=...' if it timed out."
    return ""


def notx_truth(
    direction: str,
    k: int,
    total: int,
    *,
    cause: str | None,
    state: str,
    cleaned: list[str],
    attempts: int,
    resuming: bool = False,
) -> str:
    """What statement k+1 of a no-transaction file stopping leaves, said exactly.

    ``state``: "settled" (nixmig checked the catalog and removed what it left; progress says 1..k),
    "in flight" (the progress row keeps k+1 marked as sent: it may have run), "one transaction"
    (a statement committed with its progress row, or not at all).
    """
    kind = "up" if direction == "up" else "down"
    head = _what_happened(cause, k, total, kind, attempts)
    if resuming:  # the statement was not sent again: checking what its last attempt left failed
        head = (
            f"Before statement {k + 1} of {total} of its no-transaction {kind} file ran again, nixmig could not "
            "check or clean up what its interrupted attempt left."
        )
    if cleaned:
        head += f" nixmig removed what it left in the catalog: {', '.join(cleaned)}."
    if state == "settled":
        return f"{head} {partial_truth(direction, k, total, cause=cause, cleaned=bool(cleaned))}".strip()
    before = f" after {ran(k)} ran" if k else ""
    if state == "one transaction":
        return (
            f"{head} Statement {k + 1} and its progress row are one transaction, so both committed or neither "
            f"did{before}; sqlmigrate_status shows which, and sqlmigrate_{direction} resumes there."
        ).strip()
    outcome = "not recorded" if direction == "up" else "still recorded as applied"
    return (
        f"{head} Its progress row keeps statement {k + 1} in flight{before}, and it is {outcome}; "
        f"sqlmigrate_status shows it. The next sqlmigrate_{direction} checks the catalog for what the "
        f"statement left, removes or finishes it, and resumes at statement {k + 1}."
    ).strip()


def unkept_truth(direction: str, k: int, total: int, problem: str, cleaned: list[str], *, kept: bool) -> str:
    """Statement k+1 ended without an error, but the catalog does not hold what it promises."""
    head = f"Statement {k + 1} of {total} ended without an error, but PostgreSQL did not do what it says: {problem}."
    if cleaned:
        head += f" nixmig removed {', '.join(cleaned)}."
    if kept:
        return head + f" Its progress row keeps statement {k + 1} in flight; sqlmigrate_status shows it."
    return f"{head} {partial_truth(direction, k, total, cleaned=True)}"


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
    cause: str | None = None,
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
    if cause:
        advice = cause_advice(cause, options.direction)
    failed = f"{options.verb} {entry.id} failed at {where}: {text.rstrip('.')}."
    message = " ".join(part for part in (failed, truth, kept, advice) if part)
    return MigrationFailed(
        message,
        migration_id=entry.id,
        sqlstate=sqlstate,
        applied=tuple(e.id for e in done),
        file=str(prep.file.path) if prep else None,
        line=line,
        failed=failed,
    )
