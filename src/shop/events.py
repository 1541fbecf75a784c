"""The events the services publish: what a change emits, before the outbox records it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Event:
    """`type` happened to the aggregate `key`, leaving it at `version` (monotonic per aggregate).

    A consumer keeps, per key, the highest version it has applied and drops anything older: so
    the order in which several relays deliver events does not matter.
    """

    aggregate: Literal["order", "product"]
    type: str
    key: str
    version: int
    data: dict[str, Any]
