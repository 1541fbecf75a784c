"""The garbage collector's settings for long-running processes (services and consumers).

CPython frees most objects by reference counting; the cyclic collector exists for cycles. With
its defaults (a young collection every 700 allocations, a full one whenever a quarter of the heap
is new) a busy service spent about 15 % of its CPU in the collector, mostly full collections of
50-80 ms that stopped every request at once (measured under load: docs/performance.md). So,
once start-up is over:

- everything alive then (modules, the app, pools, clients) is frozen: moved to a permanent
  generation no collection walks again;
- young collections run every 10,000 allocations instead of 700, and the full one waits for
  100 middle ones instead of 10; cyclic garbage still goes, a little later.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 100)


def settle() -> None:
    """Call once start-up is done: collect, freeze what survives, collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
