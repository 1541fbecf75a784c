"""Identifiers made without coordination: UUIDv7, time-ordered."""

from __future__ import annotations

import random
import time
import uuid

_random = random.Random()  # seeded from os.urandom


def uuid7() -> uuid.UUID:
    """A UUIDv7: Unix milliseconds then 74 random bits, so inserts go to the index's end."""
    millis = time.time_ns() // 1_000_000
    # Uniqueness, not secrecy, is what the random bits are for: a per-process generator seeded
    # from the OS at start saves a system call per id (ids are not access tokens).
    rand = _random.getrandbits(80)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)
