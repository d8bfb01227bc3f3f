"""The chaos invariant itself, on hand-made catalog states (no database): what it must accept and refuse."""

from __future__ import annotations

from .model import Snapshot, base_tree, check

SPECS = base_tree()
APPLIED = {s.id: 1 for s in SPECS if s.id != "ops/011_notx_kinds"}


def _everything_but_011() -> dict[str, bool]:
    return {e: True for s in SPECS if s.id != "ops/011_notx_kinds" for e in s.effects}


def _011_after_seven(partition: str) -> Snapshot:
    """011's first seven up statements ran; its partition t_11_4 is attached, pending detach or detached."""
    objects = _everything_but_011()
    objects.update({"table:t_11_1": True, "index:i_11_2": True, "table:t_11_3": True, "table:t_11_4": True})
    objects["index:t_11_1_v_idx"] = True
    if partition in ("attached", "pending"):
        objects["part:t_11_4"] = True
    if partition == "pending":
        objects["pending:t_11_4"] = True
    return Snapshot(records=dict(APPLIED), objects=objects)


def _progress(done: int, in_flight: bool) -> list[dict]:
    return [{"id": "ops/011_notx_kinds", "direction": "up", "done": done, "total": 8, "in_flight": in_flight}]


def test_a_detach_in_flight_may_have_detached_the_partition_or_left_it_pending_or_attached():
    for partition in ("attached", "pending", "detached"):
        snap = _011_after_seven(partition)
        snap.progress = _progress(7, True)
        assert check(SPECS, snap) == [], partition


def test_a_detach_not_in_flight_must_have_left_the_partition_attached():
    snap = _011_after_seven("detached")
    snap.progress = _progress(7, False)
    assert check(SPECS, snap) == ["ops/011_notx_kinds (not recorded, up progress 7/8): missing: part:t_11_4"]
    snap = _011_after_seven("pending")
    snap.progress = _progress(7, False)
    assert check(SPECS, snap) == [
        "ops/011_notx_kinds (not recorded, up progress 7/8): unexpected objects: pending:t_11_4"
    ]


def test_a_recorded_011_has_its_partition_detached():
    snap = _011_after_seven("detached")
    snap.records["ops/011_notx_kinds"] = 1
    assert check(SPECS, snap) == []
    snap = _011_after_seven("attached")
    snap.records["ops/011_notx_kinds"] = 1
    assert check(SPECS, snap) == ["ops/011_notx_kinds (recorded): unexpected objects: part:t_11_4"]
