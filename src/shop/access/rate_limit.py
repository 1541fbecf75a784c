"""Per-customer rate limits: a token bucket per key, in this process.

Each customer may place `burst` orders at once and `rate` per second after that; beyond it the
answer is 429 with Retry-After. Buckets live in the worker process that serves the request, so
with several workers (`WORKERS`) a customer spread over several connections may get up to that
many times the rate; one connection (HTTP keep-alive) stays with one worker. At most `max_keys`
buckets are kept (about 100 bytes each), the least recently used forgotten first: a forgotten
bucket is a full one, so forgetting never refuses anyone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from cachetools import LRUCache

from shop.clock import SYSTEM, Clock
from shop.errors import DomainError


class TooManyRequests(DomainError):
    status = 429
    title = "Too many requests"
    type_ = "/problems/rate-limited"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))


class RateLimiter:
    """`take(key)` spends one token of `key`'s bucket or raises TooManyRequests."""

    def __init__(
        self, *, rate: float, burst: int, max_keys: int = 100_000, clock: Clock = SYSTEM
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._now = clock.monotonic
        # key -> (tokens left, when they were counted)
        self._buckets: LRUCache[Hashable, tuple[float, float]] = LRUCache(max_keys)

    def take(self, key: Hashable) -> None:
        now = self._now()
        try:
            tokens, counted = self._buckets[key]
        except KeyError:  # a new customer, or one forgotten: a full bucket
            tokens, counted = self._burst, now
        tokens = min(self._burst, tokens + (now - counted) * self._rate)
        # Refill is computed in floating point: a customer exactly at the rate must not be
        # refused for 0.9999999999 of a token.
        if tokens < 1.0 - 1e-9:
            self._buckets[key] = (tokens, now)
            raise TooManyRequests(
                "Too many orders from this customer; retry later.",
                retry_after=(1.0 - tokens) / self._rate,
            )
        self._buckets[key] = (max(0.0, tokens - 1.0), now)
