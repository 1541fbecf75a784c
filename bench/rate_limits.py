"""The per-call cost of the customers' limits on the order intake's hot path, in microseconds.

Every order a customer places takes from their buckets once. Before issue 22 the buckets were
a per-process `cachetools.LRUCache` (kept here as the baseline, as it was); now they are
`shop.access.bucket_table`, a fixed table in a file the workers map, locked with `flock` for
each take. Measured in one process (the best of `--rounds` rounds of `--calls` takes, over
2,000 customers in turn, as the bench's load orders), and with `--processes` processes taking
from one file at once (the lock contended, as workers on every core would).

    python -m bench.rate_limits [--calls 200000] [--rounds 5] [--processes 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cachetools import LRUCache

from shop.access.bucket_table import BucketTable, Lane
from shop.access.rate_limit import OrderLimits
from shop.settings import Orders

CUSTOMERS = 2000
SLOTS = 65_536


class _LruLimiter:
    """The limiter as it was (one lane, per process): the baseline."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: LRUCache[int, tuple[float, float]] = LRUCache(100_000)

    def take(self, key: int) -> None:
        now = time.monotonic()
        try:
            tokens, counted = self._buckets[key]
        except KeyError:
            tokens, counted = self._burst, now
        tokens = min(self._burst, tokens + (now - counted) * self._rate)
        if tokens < 1.0 - 1e-9:
            self._buckets[key] = (tokens, now)
            raise RuntimeError("refused")
        self._buckets[key] = (max(0.0, tokens - 1.0), now)


def _per_call(take: Callable[[int], object], calls: int, rounds: int) -> float:
    """Microseconds per call, the best round of `rounds`."""
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(calls):
            take(i % CUSTOMERS)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def _unlimited_orders(path: Path | None) -> OrderLimits:
    """Order limits no customer of the run reaches (every take is a full read and write)."""
    terms = Orders(rate_per_second=1e9, burst=10**9, units_per_minute=1e12, units_burst=10**9)
    return OrderLimits(
        terms,
        slots=SLOTS,
        path=path,
    )


def _contended(path: Path, calls: int, out: Path) -> None:
    limits = _unlimited_orders(path)
    started = time.perf_counter()
    for i in range(calls):
        limits.admit(i % CUSTOMERS, 1)
    out.write_text(str((time.perf_counter() - started) / calls * 1e6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    calls, rounds = args.calls, args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as scratch:
        directory = Path(scratch)
        lru = _LruLimiter(1e9, 1e9)
        one_lane = BucketTable([Lane(1e9, 1e9)], slots=SLOTS, path=directory / "one.buckets")
        in_process = _unlimited_orders(None)
        shared = _unlimited_orders(directory / "orders.buckets")
        results = {
            "before: per-process LRU, orders only": _per_call(lru.take, calls, rounds),
            "bucket table, one lane, shared file": _per_call(
                lambda key: one_lane.take(key, (1.0,)), calls, rounds
            ),
            "order limits (orders + units), one process": _per_call(
                lambda key: in_process.admit(key, 1), calls, rounds
            ),
            "order limits (orders + units), shared file": _per_call(
                lambda key: shared.admit(key, 1), calls, rounds
            ),
        }
        context = multiprocessing.get_context("spawn")
        outs = [directory / f"contended-{n}" for n in range(args.processes)]
        path = directory / "contended.buckets"
        workers = [context.Process(target=_contended, args=(path, calls, out)) for out in outs]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        each = [float(out.read_text()) for out in outs]
        results[f"order limits, shared file, {args.processes} processes at once (worst)"] = max(
            each
        )
    width = max(map(len, results))
    for what, us in results.items():
        print(f"{what:<{width}}  {us:6.2f} us/call")


if __name__ == "__main__":
    main()
