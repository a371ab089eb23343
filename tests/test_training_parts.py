"""Training parts without processes: slicing a batch among nodes, the step timing of a run's
accounting records, and the priority of communication threads."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepedge.training import AccountingLog, slice_of, step_timing, verify_accounting
from deepedge.training._priority import prioritize_threads, thread_ids


@given(
    shares=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=12),
    data=st.data(),
)
def test_slices_tile_every_batch_and_a_partial_one_in_proportion(shares: list[int], data: st.DataObject) -> None:
    batch = sum(shares)
    n = data.draw(st.integers(min_value=1, max_value=batch), label="samples in this batch")
    offsets = [sum(shares[:i]) for i in range(len(shares))]
    bounds = [slice_of(o, s, batch, n) for o, s in zip(offsets, shares, strict=True)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, no overlap
    for (start, end), share in zip(bounds, shares, strict=True):
        assert abs((end - start) - share * n / batch) <= 1  # in proportion, within rounding
        if n == batch:
            assert end - start == share


def test_the_old_split_gave_a_partial_batch_to_the_first_nodes_only() -> None:
    # 3000 images in batches of 128: the last batch of an epoch has 56. The demo's shares.
    shares = {"orin-nx": 57, "xavier-nx": 34, "tx2": 23, "nano": 14}
    offsets = dict(zip(shares, [0, 57, 91, 114], strict=True))
    sizes = {n: slice_of(offsets[n], s, 128, 56)[1] - slice_of(offsets[n], s, 128, 56)[0] for n, s in shares.items()}
    assert sizes == {"orin-nx": 25, "xavier-nx": 15, "tx2": 10, "nano": 6}
    # a step costs share x time per sample on each board: 56 x 2 ms before, 25 x 2 ms = 50 ms now
    assert max(sizes[n] / speed for n, speed in zip(shares, (1.0, 0.6, 0.4, 0.25), strict=True)) < 56 * 0.5


def _write_records(out: Path, rows: dict[str, list[tuple[int, int, float, float, float]]]) -> None:
    """rows: node -> (gen, step, busy, reduce, t)."""
    acc = out / "accounting"
    acc.mkdir(parents=True)
    for node, recs in rows.items():
        lines = [
            json.dumps({"gen": g, "step": s, "epoch": 0, "by": {}, "busy": b, "reduce": r, "t": t})
            for g, s, b, r, t in recs
        ]
        (acc / f"{node}.jsonl").write_text("\n".join(lines) + "\n")


def test_step_timing_splits_each_interval_into_compute_allreduce_and_the_rest(tmp_path: Path) -> None:
    # two ranks, 100 ms steps: a computes 90 ms, b 80 ms; the last to arrive (a) spends 2 ms in
    # the all-reduce, b 14 ms; step ends at 0.1, 0.2, ... Step 3 was redone under generation 2.
    rows = {
        "a": [(1, s, 0.090, 0.002, 0.1 * (s + 1)) for s in range(4)] + [(2, 3, 0.090, 0.002, 0.9)],
        "b": [(1, s, 0.080, 0.014, 0.1 * (s + 1) + 0.001) for s in range(4)] + [(2, 3, 0.080, 0.014, 0.9)],
    }
    _write_records(tmp_path, rows)
    timing = step_timing(tmp_path)
    assert timing is not None
    assert timing.steps == 2  # steps 1 and 2; step 3 counts under generation 2 with no step 2 there
    assert timing.median_interval_ms == pytest.approx(100, abs=0.01)
    assert timing.median_compute_ms == pytest.approx(90, abs=0.01)
    assert timing.median_allreduce_ms == pytest.approx(2, abs=0.01)
    assert timing.median_rest_ms == pytest.approx(8, abs=0.01)
    assert timing.interval_s == pytest.approx(timing.compute_s + timing.allreduce_s + timing.rest_s, abs=1e-6)


def test_records_carry_timing_and_still_verify(tmp_path: Path) -> None:
    log = AccountingLog(tmp_path, "a")
    log.record(1, 0, 0, {"a": [0, 1]}, busy_s=0.05, reduce_s=0.001)
    log.record(1, 1, 0, {"a": [2, 3]}, busy_s=0.05, reduce_s=0.001)
    log.close()
    row = json.loads((tmp_path / "accounting" / "a.jsonl").read_text().splitlines()[0])
    assert row["busy"] == 0.05 and row["reduce"] == 0.001 and row["t"] > 0
    assert verify_accounting(tmp_path, 4, 1)["ok"]
    assert step_timing(tmp_path) is None  # one interval is too few to say anything


def test_the_threads_started_while_a_group_forms_get_the_communication_priority() -> None:
    named, stop = threading.Event(), threading.Event()
    tids: dict[str, int] = {}
    before = thread_ids()

    def thread(name: bytes) -> None:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME, as gloo names its threads
        tids[name.decode()] = threading.get_native_id()
        if len(tids) == 2:
            named.set()
        stop.wait(10)

    threads = [threading.Thread(target=thread, args=(n,)) for n in (b"gloo_tcp_loop", b"pt_gloo_runloop")]
    for t in threads:
        t.start()
    try:
        assert named.wait(5)
        new = thread_ids() - before
        assert new == set(tids.values())
        main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        target = min(19, main + 3)  # raising a nice value needs no privilege
        assert prioritize_threads(target, new) == 2
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in new} == {target}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller keeps its own
        assert prioritize_threads(None, new) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_the_slow_start_ramps_to_the_cap_and_paces_loading() -> None:
    """Each generation's first RAMP_S seconds run below the cap (from RAMP_FLOOR x cap, linearly);
    a Pacer holds a loop's duty cycle."""
    import time

    from deepedge.training._compute import RAMP_FLOOR, RAMP_S, Pacer, ramp

    assert ramp(0.0, 0.8) == pytest.approx(RAMP_FLOOR * 0.8)
    assert ramp(RAMP_S / 2, 0.8) == pytest.approx(0.8 * (RAMP_FLOOR + (1 - RAMP_FLOOR) / 2))
    assert ramp(RAMP_S, 0.8) == 0.8 and ramp(100.0, 0.8) == 0.8
    pace = Pacer(0.25)
    t0, busy = time.perf_counter(), 0.0
    while time.perf_counter() - t0 < 0.4:
        b0 = time.perf_counter()
        while time.perf_counter() - b0 < 0.005:  # 5 ms of work
            pass
        busy += time.perf_counter() - b0
        pace()
    duty = busy / (time.perf_counter() - t0)
    assert 0.15 <= duty <= 0.3, duty


def test_a_re_form_goes_on_from_the_intensity_trained_at_and_a_start_from_the_floor() -> None:
    """A worker that trained within RAMP_WARM_S (a failover's re-form) skips the part of the slow
    start below the intensity it trained at (at most the new cap); a fresh worker, or one idle
    longer, starts at the floor."""
    from deepedge.training._compute import RAMP_FLOOR, RAMP_S, RAMP_WARM_S, ramp, ramp_head_start

    assert ramp_head_start(0.8, None, 100.0) == 0.0  # a worker's first generation
    assert ramp_head_start(0.8, (100.0 - RAMP_WARM_S - 1, 0.8), 100.0) == 0.0  # idle too long
    full = ramp_head_start(0.8, (99.0, 0.8), 100.0)
    assert full == RAMP_S and ramp(full, 0.8) == 0.8  # at its cap before: at its cap again
    assert ramp_head_start(0.5, (99.0, 1.0), 100.0) == RAMP_S  # never above the new cap
    half = ramp_head_start(0.8, (99.0, 0.4), 100.0)  # mid-ramp, or a cap raised: from where it was
    assert 0 < half < RAMP_S and ramp(half, 0.8) == pytest.approx(0.4)
    assert ramp_head_start(0.8, (99.0, 0.1), 100.0) == 0.0 and ramp(0.0, 0.8) == RAMP_FLOOR * 0.8


def test_ranks_wait_for_a_late_peer_past_the_collective_timeout_until_the_arrival_limit() -> None:
    """A worker started at a low cap loads its data paced and reaches the rendezvous well after
    its peers: they wait for it past the store's (collective) timeout, up to the arrival limit,
    and a rank later than that is given up on with a message that says how many came."""
    import datetime
    import time

    from deepedge.embedded_broker import free_port
    from deepedge.training._rendezvous import Rendezvous

    def meet(port: int, late_s: float, arrival_s: float) -> tuple[object, object]:
        timeout, arrival = datetime.timedelta(seconds=0.5), datetime.timedelta(seconds=arrival_s)
        got: dict[int, object] = {}

        def rank(r: int) -> None:
            if r == 1:
                time.sleep(late_s)
            try:
                got[r] = Rendezvous("127.0.0.1", timeout, lambda _g: False, arrival).join("127.0.0.1", port, r, 2, 1)
            except RuntimeError as exc:
                got[r] = exc

        threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return got[0], got.get(1)

    first, second = meet(free_port(), late_s=1.5, arrival_s=6.0)  # 3x the store's timeout late
    assert not isinstance(first, Exception) and not isinstance(second, Exception), (first, second)
    alone, _ = meet(free_port(), late_s=3.0, arrival_s=1.0)
    assert isinstance(alone, RuntimeError) and "1 of 2 ranks arrived within 1 s" in str(alone)
