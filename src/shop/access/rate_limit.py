"""Per-client limits: token buckets shared by the worker processes of a service on a node.

- Orders (`OrderLimits`): a customer may place `ORDER_BURST` orders at once and
  `ORDER_RATE_PER_SECOND` after that, and order `CUSTOMER_UNITS_BURST` units at once and
  `CUSTOMER_UNITS_PER_MINUTE` after that; both are decided together, so an order refused by one
  spends nothing of the other.
- Catalogue searches (`SearchLimits`): a client (its address, or a customer's token subject)
  may search `SEARCH_BURST` times at once and `SEARCH_RATE_PER_SECOND` after that.

Beyond a limit the answer is 429 with Retry-After, and a problem+json body whose `limit` member
names the limit. The buckets live in a `BucketTable` (a fixed table in memory that every worker
of the service maps), so a limit is the same whatever the number of workers and whichever worker
a connection lands on. It is per node: N pods of a service admit N times it (docs/security.md
says what the ingress does about that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import Counter

from shop.access.bucket_table import BucketTable, Lane
from shop.clock import SYSTEM, Clock
from shop.errors import DomainError
from shop.settings import Orders, Products

G = TypeVar("G", Orders, Products)

REFUSALS = Counter("rate_limit_refusals_total", "Requests refused by a per-client limit", ["limit"])


class TooManyRequests(DomainError):
    status = 429
    title = "Too many requests"
    type_ = "/problems/rate-limited"

    def __init__(self, detail: str, *, retry_after: float, limit: str) -> None:
        super().__init__(detail, extra={"limit": limit})
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit as a client is told about it: its name (the 429's `limit`) and its terms."""

    name: str
    lane: Lane
    refusal: str  # the 429's detail


def _limit(
    name: str, what: str, burst: int, rate: float, *, per: str = "second", then: str = ""
) -> Limit:
    """`burst` of `what` at once, then `rate` a second (or a minute)."""
    lane = Lane(rate / 60 if per == "minute" else rate, burst)
    refusal = (
        f"Too many {what} (at most {burst} at once, then {rate:g} a {per}); "
        f"retry after Retry-After seconds{then}."
    )
    return Limit(name, lane, refusal)


class Limits(Generic[G]):
    """Limits of one kind of key (customers, clients), taken together from one table; `terms`
    says what they are, from the settings group that holds them."""

    def __init__(
        self, settings: G, *, slots: int, path: Path | None = None, clock: Clock = SYSTEM
    ) -> None:
        self._limits = self.terms(settings)
        lanes = [limit.lane for limit in self._limits]
        self.table = BucketTable(lanes, slots=slots, path=path, clock=clock)

    @staticmethod
    def terms(settings: G) -> tuple[Limit, ...]:
        raise NotImplementedError

    def _take(self, key: int, costs: tuple[float, ...]) -> None:
        refused = self.table.take(key, costs)
        if refused is not None:
            limit = self._limits[refused.lane]
            REFUSALS.labels(limit.name).inc()
            raise TooManyRequests(limit.refusal, retry_after=refused.wait, limit=limit.name)


class OrderLimits(Limits[Orders]):
    """A customer's orders per second and units per minute."""

    @staticmethod
    def terms(settings: Orders) -> tuple[Limit, ...]:
        orders = _limit(
            "orders", "orders from this customer", settings.burst, settings.rate_per_second
        )
        units = _limit(
            "units",
            "units ordered by this customer",
            settings.units_burst,
            settings.units_per_minute,
            per="minute",
            then=", or order fewer",
        )
        return orders, units

    def admit(self, customer: int, quantity: int) -> None:
        """Count an order of `quantity` units by `customer`, or raise TooManyRequests."""
        self._take(customer, (1.0, float(quantity)))


class SearchLimits(Limits[Products]):
    """A client's catalogue searches per second."""

    @staticmethod
    def terms(settings: Products) -> tuple[Limit, ...]:
        burst, rate = settings.search_burst, settings.search_rate_per_second
        return (_limit("searches", "searches from this client", burst, rate),)

    def admit(self, client: int) -> None:
        """Count a search by `client` (`Clients.key`), or raise TooManyRequests."""
        self._take(client, (1.0,))
