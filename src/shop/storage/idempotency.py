"""Idempotency-Keys: what one may be, and their records (the first answer to a request,
replayed for its retries)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, StringConstraints
from sqlalchemy import Column, Index, LargeBinary, MetaData, SmallInteger, Table, select
from sqlalchemy.dialects.mysql import BINARY, MEDIUMBLOB
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil
from shop.errors import IdempotencyMismatch
from shop.storage.database import Timestamp

MAX_KEY_LENGTH = 255
# What an HTTP header's value can carry (RFC 9110 field-value, its bytes read as latin-1, as the
# servers read them): tab, space, visible ASCII and the octets 0x80-0xFF. No other control
# character, nothing beyond U+00FF.
_KEY_CHARACTERS = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
KEY_CHARACTERS_REFUSED = (
    "may hold only tab, space, visible ASCII and the characters U+0080-U+00FF "
    "(what an HTTP header carries)"
)


def is_key(text: str) -> bool:
    """Whether `text` is an Idempotency-Key: 1 to MAX_KEY_LENGTH characters an HTTP header can
    carry. The one rule, for the fast path's parse; `KeyText` is the same rule for pydantic (as
    a header, and in an order command a consumer reads)."""
    return 0 < len(text) <= MAX_KEY_LENGTH and _KEY_CHARACTERS.fullmatch(text) is not None


def _header_characters(text: str) -> str:
    if _KEY_CHARACTERS.fullmatch(text) is None:
        raise ValueError(KEY_CHARACTERS_REFUSED)
    return text


# An Idempotency-Key as a pydantic type: `is_key`, with pydantic's messages for the length.
KeyText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH),
    AfterValidator(_header_characters),
]


def idempotency_table(name: str, metadata: MetaData) -> Table:
    """A table of remembered answers, keyed by a hash of the scoped key."""
    return Table(
        name,
        metadata,
        Column("key_hash", LargeBinary(32).with_variant(BINARY(32), "mysql"), primary_key=True),
        Column("request_hash", LargeBinary(32).with_variant(BINARY(32), "mysql"), nullable=False),
        Column("status", SmallInteger, nullable=False),
        Column("body", LargeBinary().with_variant(MEDIUMBLOB(), "mysql"), nullable=False),
        Column("created_at", Timestamp, nullable=False),
        Index(f"ix_{name}_created_at", "created_at"),  # keys expire (shop.storage.expiry)
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A remembered response."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Key:
    """An Idempotency-Key with the request it came with, both hashed."""

    key_hash: bytes
    request_hash: bytes

    @classmethod
    def of(cls, key: str, *, scope: str, request: object) -> Key:
        return cls(
            key_hash=hashlib.sha256(f"{scope}\x1f{key}".encode()).digest(),
            request_hash=hashlib.sha256(jsonutil.dumps(request)).digest(),
        )


async def recall(conn: AsyncConnection, table: Table, key: Key) -> Answer | None:
    """The answer first given under this key, or None; a different request is refused."""
    query = select(table.c.request_hash, table.c.status, table.c.body)
    row = (await conn.execute(query.where(table.c.key_hash == key.key_hash))).first()
    if row is None:
        return None
    if row.request_hash != key.request_hash:
        raise IdempotencyMismatch(
            "This Idempotency-Key was first used with a different request body."
        )
    return Answer(status=row.status, body=row.body)


async def remember(conn: AsyncConnection, table: Table, key: Key, answer: Answer) -> None:
    """Store the answer inside the caller's transaction (a racing twin fails on the key)."""
    await conn.execute(
        table.insert().values(
            key_hash=key.key_hash,
            request_hash=key.request_hash,
            status=answer.status,
            body=answer.body,
            created_at=jsonutil.utcnow(),
        )
    )
