"""The per-customer token bucket: never more than its burst plus its rate, never refuses a
customer who keeps to the rate, and its Retry-After is enough."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shop.access.rate_limit import RateLimiter, TooManyRequests
from tests.clock import FakeClock as Clock

rates = st.floats(0.5, 100)
bursts = st.integers(1, 50)
gaps = st.lists(st.floats(0, 2), min_size=1, max_size=200)


@given(rate=rates, burst=bursts, gaps=gaps)
def test_admitted_orders_never_exceed_the_burst_plus_the_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    admitted = 0
    for gap in gaps:
        clock.now += gap
        try:
            limiter.take("customer")
            admitted += 1
        except TooManyRequests:
            pass
        assert admitted <= burst + rate * (clock.now - gaps[0]) + 1e-6


@given(rate=rates, burst=bursts, extra=st.lists(st.floats(0, 1), max_size=100))
@example(rate=1.5, burst=1, extra=[1.0, 0.0])  # 1/1.5 s refilled 0.9999999999 of a token
def test_a_customer_who_keeps_to_the_rate_is_never_refused(
    rate: float, burst: int, extra: list[float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    for more in extra:
        clock.now += 1 / rate + more
        limiter.take("customer")


@given(rate=rates, burst=bursts)
def test_retry_after_is_long_enough_and_customers_do_not_share_a_bucket(
    rate: float, burst: int
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    for _ in range(burst):
        limiter.take("alice")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("alice")  # the burst is spent: the next order must wait
    assert refused.value.status == 429
    wait = int(refused.value.headers["Retry-After"])
    limiter.take("bob")  # a full bucket of his own
    clock.now += wait
    limiter.take("alice")


def test_buckets_are_bounded_and_a_forgotten_one_is_full() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=1, max_keys=3, clock=clock)
    for customer in range(10):
        limiter.take(customer)
    assert len(limiter._buckets) == 3
    limiter.take(0)  # forgotten, so full again: admitted
