"""The bench's customers: many users, each ordering with an access token of their own.

A customer is a user id and a token from the development issuer whose subject is that id and
which has no scope: what `shop token --user N` prints, and what a real customer holds. Their
order bodies name that same user (the order service answers 403 to a body naming another user),
and each customer stays under the per-customer rate limit (`ORDER_RATE_PER_SECOND`, burst
`ORDER_BURST`): the load takes customers in turn, so at R requests/s each one sends
R / `CUSTOMERS` a second (2,000 customers: 10/s each only past 20,000 requests/s).

`Customers.order_requests` writes the file `shopload -requests` reads: one request per line,
`Bearer <token>\\t<body>`, customers round-robin, the products in a seeded random order (the
same order on both sides of a compare).

An order service verifies a token the first time one of its workers sees it (a signature check,
about 0.3-0.6 ms) and then finds it in that worker's cache (about 1 us). So that the first
measured run does not pay 2,000 checks per worker that later runs do not, `warm_token_caches`
has each customer read a page of their orders a few times before the load (not counted).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadResult, run_load
from shop.access.dev_issuer import dev_token, ensure_dev_key
from shop.settings import Settings

CUSTOMERS = 2000
FIRST_USER = 1_000_001  # above the user ids the tests use; the mixed load's are above 2e9
TOKEN_TTL_SECONDS = 6 * 3600
ROUNDS = 5  # lines per customer in a requests file (the file is then read again from the top)
# Requests per customer to warm the token caches: with 2 workers, 94 % of the customers reach
# both (a request goes to whichever connection, so whichever worker, is free).
WARM_ROUNDS = 5


@dataclass(frozen=True)
class Customers:
    """`len(tokens)` customers: user `first_user + i` holds `tokens[i]`."""

    first_user: int
    tokens: tuple[str, ...]

    @classmethod
    def make(
        cls, settings: Settings, count: int = CUSTOMERS, first_user: int = FIRST_USER
    ) -> Customers:
        """Tokens for `count` customers from the development issuer (`make up` made its key;
        2,000 take about 0.4 s)."""
        if count < 1:
            raise ValueError("at least one customer")
        ensure_dev_key(settings)
        tokens = tuple(
            dev_token(
                settings, subject=str(first_user + i), scopes=[], ttl_seconds=TOKEN_TTL_SECONDS
            )
            for i in range(count)
        )
        return cls(first_user, tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def user(self, i: int) -> int:
        """The user id of the i-th request's customer (round-robin)."""
        return self.first_user + i % len(self.tokens)

    def headers(self, i: int) -> dict[str, str]:
        """The Authorization header of the i-th request's customer."""
        return {"Authorization": f"Bearer {self.tokens[i % len(self.tokens)]}"}

    def order_requests(
        self, path: Path, product_ids: Sequence[int], *, seed: int | str, rounds: int = ROUNDS
    ) -> Path:
        """Write `rounds` x customers order requests to `path`, customers in turn, each a
        `quantity` 1 order of a product drawn from `product_ids` by a `seed`ed random (one
        product: the hot-product load)."""
        if not product_ids:
            raise ValueError("no products to order")
        rng = random.Random(seed)
        with path.open("w") as out:
            for i in range(rounds * len(self.tokens)):
                body = {
                    "user_id": self.user(i),
                    "product_id": product_ids[rng.randrange(len(product_ids))],
                    "quantity": 1,
                }
                out.write(f"Bearer {self.tokens[i % len(self.tokens)]}\t{json.dumps(body)}\n")
        return path

    def describe(self) -> str:
        return (
            f"{len(self.tokens):,} customers (users {self.first_user}-"
            f"{self.first_user + len(self.tokens) - 1}), each with their own token, in turn"
        )


def warm_token_caches(
    order_service: str, customers: Customers, directory: Path, rounds: int = WARM_ROUNDS
) -> LoadResult:
    """Each customer in turn reads their first order page (`GET /orders?limit=1`) `rounds`
    times over 50 connections, so the workers of the order service at `order_service`
    (`http://host:port`) have verified and cached their tokens before the measured load. Reads
    only; the answers are returned, not judged (a commit without `GET /orders` or without
    tokens answers something else, which is fine)."""
    path = directory / "warm-tokens.tsv"
    path.write_text(
        "".join(f"Bearer {token}\t\n" for _ in range(rounds) for token in customers.tokens)
    )
    return run_load(
        f"{order_service}/orders?limit=1",
        connections=50,
        seconds=120,
        requests=path,
        method="GET",
        count=rounds * len(customers),
    )
