"""Pairing policy and keep-latest hand-over (shared by the node and bag replay)."""

from __future__ import annotations

import threading

import pytest

from ivf_perception.sync import ApproximateTimePairer, LatestSlot, PairingStats

MS = 1_000_000


def test_pairs_within_slop_and_reports_skew() -> None:
    p = ApproximateTimePairer(slop_s=0.02)
    assert p.add("rgb", 100 * MS, "r1") is None
    pair = p.add("thermal", 103 * MS, "t1")
    assert (pair.rgb, pair.thermal, pair.skew_ns) == ("r1", "t1", 3 * MS)
    assert p.stats.paired == 1 and p.stats.skew_max_ms == pytest.approx(3.0)


def test_outside_slop_waits_then_older_are_unmatched() -> None:
    p = ApproximateTimePairer(slop_s=0.01)
    assert p.add("rgb", 100 * MS, "r1") is None
    assert p.add("thermal", 150 * MS, "t1") is None  # 50 ms away: no pair
    pair = p.add("rgb", 152 * MS, "r2")
    assert pair.rgb == "r2" and pair.thermal == "t1"
    assert p.stats.unmatched == {"rgb": 1, "thermal": 0}  # r1 can no longer pair
    assert p.pending() == {"rgb": 0, "thermal": 0}


def test_nearest_queued_partner_is_chosen() -> None:
    p = ApproximateTimePairer(slop_s=0.05)
    p.add("thermal", 90 * MS, "t1")
    p.add("thermal", 99 * MS, "t2")
    pair = p.add("rgb", 100 * MS, "r1")
    assert pair.thermal == "t2"
    assert p.stats.unmatched["thermal"] == 1


def test_queue_overflow_counts_unmatched() -> None:
    p = ApproximateTimePairer(slop_s=0.001, queue_size=3)
    for i in range(5):
        p.add("rgb", i * 100 * MS, f"r{i}")
    assert p.stats.unmatched["rgb"] == 2 and p.pending()["rgb"] == 3
    p.flush()
    assert p.stats.unmatched["rgb"] == 5


def test_out_of_order_stamps_are_counted() -> None:
    p = ApproximateTimePairer(slop_s=0.001)
    p.add("rgb", 200 * MS, "a")
    p.add("rgb", 100 * MS, "b")
    assert p.stats.out_of_order["rgb"] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="slop must be >= 0"):
        ApproximateTimePairer(slop_s=-1)
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        ApproximateTimePairer(queue_size=0)
    with pytest.raises(ValueError, match="unknown stream 'depth'"):
        ApproximateTimePairer().add("depth", 0, None)


def test_same_arrival_order_gives_same_pairs() -> None:
    """Replay reproduces live pairing: the policy depends only on arrival order and stamps."""
    events = [("rgb", 0), ("thermal", 3), ("thermal", 36), ("rgb", 33), ("rgb", 66), ("thermal", 70),
              ("thermal", 103), ("rgb", 140), ("thermal", 136)]
    runs = []
    for _ in range(2):
        p = ApproximateTimePairer(slop_s=0.01)
        runs.append([(q.rgb_stamp_ns, q.thermal_stamp_ns) for s, t in events
                     if (q := p.add(s, t * MS, None)) is not None])
    assert runs[0] == runs[1] == [(0, 3 * MS), (33 * MS, 36 * MS), (66 * MS, 70 * MS), (140 * MS, 136 * MS)]


def test_latest_slot_drops_stale_values() -> None:
    stats = PairingStats()
    slot: LatestSlot[int] = LatestSlot(stats)
    slot.put(1)
    slot.put(2)
    assert slot.get(timeout=0.1) == 2 and stats.dropped_stale == 1
    assert slot.get(timeout=0.01) is None


def test_latest_slot_wakes_a_waiting_worker_and_closes() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.get(timeout=5)))
    worker.start()
    slot.put("x")
    worker.join(5)
    assert got == ["x"]
    slot.close()
    assert slot.get(timeout=5) is None


def test_reset_after_time_jumps_back() -> None:
    p = ApproximateTimePairer(slop_s=0.01)
    p.add("rgb", 500 * MS, "old")
    p.reset()
    assert p.pending() == {"rgb": 0, "thermal": 0} and p.stats.unmatched["rgb"] == 1
    p.add("rgb", 10 * MS, "new")
    assert p.stats.out_of_order["rgb"] == 0
    assert p.add("thermal", 12 * MS, "t").rgb == "new"


def test_a_jump_back_past_the_threshold_resets_and_is_reported() -> None:
    p = ApproximateTimePairer(slop_s=0.01, time_jump_s=1.0)
    p.add("rgb", 5_000 * MS, "old")
    assert p.add("thermal", 3_500 * MS, "t0") is None  # thermal's own history is empty: no jump
    assert p.stats.resets == 0 and p.take_time_jumps() == []
    p.add("rgb", 3_900 * MS, "back")  # 1.1 s behind rgb's newest: reset before it is queued
    jumps = p.take_time_jumps()
    assert [(j.stream, j.newest_ns, j.stamp_ns) for j in jumps] == [("rgb", 5_000 * MS, 3_900 * MS)]
    assert jumps[0].back_s == pytest.approx(1.1) and p.stats.resets == 1
    assert p.stats.unmatched == {"rgb": 1, "thermal": 1}, "everything queued before the jump is unmatched"
    assert p.pending() == {"rgb": 1, "thermal": 0} and p.stats.out_of_order["rgb"] == 0
    assert p.add("thermal", 3_905 * MS, "t1").rgb == "back"
    assert p.take_time_jumps() == [], "jumps are handed out once"


def test_a_step_back_within_the_threshold_only_counts_out_of_order() -> None:
    p = ApproximateTimePairer(slop_s=0.01, time_jump_s=1.0)
    p.add("rgb", 2_000 * MS, "a")
    p.add("rgb", 1_000 * MS, "b")  # exactly the threshold back: not a jump
    assert p.stats.resets == 0 and p.stats.out_of_order["rgb"] == 1


def test_the_newest_stamp_not_the_last_one_is_the_reference() -> None:
    """A late message does not lower the newest stamp, so the next jump is measured from the peak."""
    p = ApproximateTimePairer(slop_s=0.01, time_jump_s=1.0)
    for stamp in (3_000, 2_500, 2_400):  # steps back of 0.5 and 0.6 s from the newest (3.0 s)
        p.add("rgb", stamp * MS, stamp)
    assert p.stats.resets == 0 and p.stats.out_of_order["rgb"] == 2
    p.add("rgb", 1_900 * MS, "far")  # 0.5 s behind the last stamp but 1.1 s behind the newest
    assert p.stats.resets == 1
    p.add("rgb", 1_950 * MS, "after")  # history restarted at 1.9 s: in order
    assert p.stats.out_of_order["rgb"] == 2


def test_without_a_threshold_the_pairer_never_resets_itself() -> None:
    p = ApproximateTimePairer(slop_s=0.01)
    p.add("rgb", 100_000 * MS, "a")
    p.add("rgb", 1 * MS, "b")
    assert p.stats.resets == 0 and p.stats.out_of_order["rgb"] == 1
    with pytest.raises(ValueError, match="time_jump_s"):
        ApproximateTimePairer(time_jump_s=-1.0)
