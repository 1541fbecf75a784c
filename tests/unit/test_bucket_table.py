"""The shared table of token buckets: never more than a burst plus the rate over any run, in
one process or in several that share the file; all of a key's lanes or none; a fixed size
whatever the number of keys, and forgetting a key never refuses it.

Time is a clock the tests move, except where real processes race for the same buckets.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shop.access.bucket_table import WINDOW, BucketTable, Lane
from tests.clock import FakeClock

rates = st.floats(0.5, 100)
bursts = st.integers(1, 50)
gaps = st.lists(st.floats(0, 2), min_size=1, max_size=200)


def _table(lanes: list[Lane], clock: FakeClock, slots: int = 1024) -> BucketTable:
    return BucketTable(lanes, slots=slots, clock=clock)


@given(rate=rates, burst=bursts, gaps=gaps, shared=st.booleans())
def test_admitted_takes_never_exceed_the_burst_plus_the_rate(
    rate: float,
    burst: int,
    gaps: list[float],
    shared: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Over any run, in one process's table or alternately in two maps of one file (two
    workers, each connection landing on either)."""
    clock = FakeClock()
    if shared:
        path = tmp_path_factory.mktemp("buckets") / "t.buckets"
        lanes = [Lane(rate, burst)]
        tables = [BucketTable(lanes, slots=1024, path=path, clock=clock) for _ in "ab"]
    else:
        tables = [_table([Lane(rate, burst)], clock)]
    admitted = 0
    for n, gap in enumerate(gaps):
        clock.now += gap
        if tables[n % len(tables)].take(7, (1.0,)) is None:
            admitted += 1
        assert admitted <= burst + rate * (clock.now - gaps[0]) + 1e-6
    for table in tables:
        table.close()


@given(rate=rates, burst=bursts, extra=st.lists(st.floats(0, 1), max_size=100))
@example(rate=1.5, burst=1, extra=[1.0, 0.0])  # 1/1.5 s refilled 0.9999999999 of a token
def test_a_key_that_keeps_to_the_rate_is_never_refused(
    rate: float, burst: int, extra: list[float]
) -> None:
    clock = FakeClock()
    table = _table([Lane(rate, burst)], clock)
    for more in extra:
        clock.now += 1 / rate + more
        assert table.take(7, (1.0,)) is None


class _Model:
    """Independent buckets of every lane per key, in a dict: what the table must do while no
    key is forgotten."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = lanes
        self.buckets: dict[int, tuple[list[float], float]] = {}

    def take(self, key: int, costs: tuple[float, ...], now: float) -> int | None:
        tokens, counted = self.buckets.get(key, ([lane.burst for lane in self.lanes], now))
        have = [
            min(lane.burst, t + (now - counted) * lane.rate)
            for t, lane in zip(tokens, self.lanes, strict=True)
        ]
        refused = next((i for i, c in enumerate(costs) if have[i] < c - 1e-9), None)
        if refused is None:
            have = [max(0.0, h - c) for h, c in zip(have, costs, strict=True)]
        self.buckets[key] = (have, now)
        return refused


@settings(max_examples=200)
@given(
    orders=st.tuples(rates, bursts),
    units=st.tuples(st.floats(1, 100), st.integers(5, 100)),
    takes=st.lists(
        st.tuples(st.integers(0, 5), st.floats(0, 1), st.integers(1, 5)), min_size=1, max_size=150
    ),
)
def test_a_take_spends_from_every_lane_or_from_none(
    orders: tuple[float, int], units: tuple[float, int], takes: list[tuple[int, float, int]]
) -> None:
    """Two lanes (orders, units) decided together, as the model of independent buckets decides:
    an order that one lane refuses spends nothing of the other."""
    lanes = [Lane(*orders), Lane(*units)]
    clock = FakeClock()
    table, model = _table(lanes, clock), _Model(lanes)
    for key, gap, quantity in takes:
        clock.now += gap
        costs = (1.0, float(quantity))
        refused = table.take(key, costs)
        assert (None if refused is None else refused.lane) == model.take(key, costs, clock.now)


@given(rate=rates, burst=bursts, cost=st.integers(1, 50))
def test_the_wait_a_refusal_names_is_enough(rate: float, burst: int, cost: int) -> None:
    clock = FakeClock()
    table = _table([Lane(rate, max(burst, cost))], clock)
    while table.take(1, (float(cost),)) is None:
        pass
    refused = table.take(1, (float(cost),))
    assert refused is not None
    clock.now += refused.wait
    assert table.take(1, (float(cost),)) is None
    assert table.take(2, (float(cost),)) is None, "another key has a bucket of its own"


@given(keys=st.lists(st.integers(0, 2**64 - 2), min_size=1, max_size=600))
def test_the_table_never_grows_and_a_new_or_forgotten_key_is_never_refused(
    keys: list[int],
) -> None:
    """64 slots for up to 600 keys, each spending its whole burst: the table holds at most its
    slots, and every key's first take passes however many others pushed it out."""
    clock = FakeClock()
    table = _table([Lane(0.001, 3)], clock, slots=64)
    size = len(table._map)
    seen = set()
    for key in keys:
        clock.now += 0.001
        assert table.take(key, (3.0,)) is None or key in seen
        seen.add(key)
    assert table.keys() <= 64
    assert len(table._map) == size


def test_a_full_window_gives_up_its_fullest_bucket() -> None:
    """Keys that share a window: the one whose bucket refilled goes first (it is the same as no
    bucket), not a spent one."""
    clock = FakeClock()
    table = _table([Lane(1.0, 10)], clock, slots=WINDOW)  # one window: every key shares it
    for key in range(WINDOW):
        assert table.take(key, (10.0,) if key else (1.0,)) is None  # key 0 nearly full
    assert table.take(100, (1.0,)) is None  # takes key 0's slot
    assert table.take(1, (1.0,)) is not None, "key 1, spent, was kept"
    assert table.take(0, (10.0,)) is None, "key 0 was forgotten: a full bucket"


def test_a_table_file_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.buckets"
    BucketTable([Lane(1, 1)], slots=1024, path=path).close()
    with pytest.raises(ValueError, match="1-lane buckets in 1024 slots"):
        BucketTable([Lane(1, 1), Lane(1, 1)], slots=1024, path=path)
    with pytest.raises(ValueError, match="power of two"):
        BucketTable([Lane(1, 1)], slots=1000)


def _spend(path: Path, takes: int, out: Path) -> None:
    table = BucketTable([Lane(1e-6, 500)], slots=1024, path=path)
    out.write_text(str(sum(table.take(42, (1.0,)) is None for _ in range(takes))))
    table.close()


def test_processes_sharing_the_file_share_one_bucket(tmp_path: Path) -> None:
    """Four processes race for one key's bucket of 500 (refilling a millionth a second): 500
    pass in all, not 500 each and not fewer: no take is lost between processes."""
    path = tmp_path / "orders.buckets"
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"admitted-{n}" for n in range(4)]
    workers = [context.Process(target=_spend, args=(path, 400, out)) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert sum(int(out.read_text()) for out in outs) == 500
