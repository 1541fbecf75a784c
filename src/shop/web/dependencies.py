"""Annotated dependency aliases shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from shop.storage.idempotency import KeyText

IdempotencyKey = Annotated[
    KeyText | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with the same key and body get the first answer.",
    ),
]
