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

from shop.access.bucket_table import BucketTable, Lane
from shop.clock import SYSTEM, Clock
from shop.errors import DomainError


class TooManyRequests(DomainError):
    status = 429
    title = "Too many requests"
    type_ = "/problems/rate-limited"

    def __init__(self, detail: str, *, retry_after: float, limit: str) -> None:
        super().__init__(detail, extra={"limit": limit})
        self.limit = limit
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit as a client is told about it: its name (the 429's `limit`) and its terms."""

    name: str
    lane: Lane
    refusal: str  # the 429's detail


class Limits:
    """Limits of one kind of key (customers, clients), taken together from one table."""

    def __init__(
        self,
        limits: tuple[Limit, ...],
        *,
        slots: int,
        path: Path | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._limits = limits
        lanes = [limit.lane for limit in limits]
        self.table = BucketTable(lanes, slots=slots, path=path, clock=clock)

    def _take(self, key: int, costs: tuple[float, ...]) -> None:
        refused = self.table.take(key, costs)
        if refused is not None:
            limit = self._limits[refused.lane]
            raise TooManyRequests(limit.refusal, retry_after=refused.wait, limit=limit.name)

    def close(self) -> None:
        self.table.close()


class OrderLimits(Limits):
    """A customer's orders per second and units per minute."""

    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        units_per_minute: float,
        units_burst: int,
        slots: int,
        path: Path | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        orders = Limit(
            "orders",
            Lane(rate_per_second, burst),
            f"Too many orders from this customer (at most {burst} at once, then "
            f"{rate_per_second:g} a second); retry after Retry-After seconds.",
        )
        units = Limit(
            "units",
            Lane(units_per_minute / 60, units_burst),
            f"Too many units ordered by this customer (at most {units_burst} at once, then "
            f"{units_per_minute:g} a minute); retry after Retry-After seconds, or order fewer.",
        )
        super().__init__((orders, units), slots=slots, path=path, clock=clock)

    def admit(self, customer: int, quantity: int) -> None:
        """Count an order of `quantity` units by `customer`, or raise TooManyRequests."""
        self._take(customer, (1.0, float(quantity)))


class SearchLimits(Limits):
    """A client's catalogue searches per second."""

    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        slots: int,
        path: Path | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        searches = Limit(
            "searches",
            Lane(rate_per_second, burst),
            f"Too many searches from this client (at most {burst} at once, then "
            f"{rate_per_second:g} a second); retry after Retry-After seconds.",
        )
        super().__init__((searches,), slots=slots, path=path, clock=clock)

    def admit(self, client: int) -> None:
        """Count a search by `client` (`client_address.client_key`), or raise TooManyRequests."""
        self._take(client, (1.0,))
