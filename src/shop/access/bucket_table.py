"""Token buckets in a fixed table, shared by the worker processes of one service on a node.

A limit must not multiply by the number of workers, nor depend on which worker the kernel gives a
connection to: the buckets live in a file that every worker maps into memory (in the service's
run directory, `SHOP_WORKER_DIR`, made by `shop serve`), or, with one process, in an anonymous
map. A take holds an exclusive record lock (`fcntl`) on its key's window of slots for the few
microseconds it reads and writes one of them, so takes of keys in other windows never wait on
each other (with one lock for the whole file, a worker waited whenever the scheduler paused
another that held it: docs/performance.md); the kernel drops the locks of a process that dies,
so a killed worker never wedges the others. Times are `time.monotonic()`, which is the same
clock in every process of the machine.

The table holds `slots` buckets (a power of two) and never grows. A key lives in one of the
`WINDOW` slots after its hash (salted per table, so that nobody outside can aim keys at one
window). A new key takes the first empty slot of its window, else the slot whose bucket is the
fullest now: a bucket that has refilled is the same as none (expired), and forgetting a
partly spent one gives its key a full bucket again, so eviction can let a key through early but
never refuses anyone.

Each slot holds one bucket per lane (`Lane`: a rate and a burst): one take spends from every
lane of a key at once, or from none of them (the order limits: orders per second and units per
minute, decided together).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from shop.clock import SYSTEM, Clock

WINDOW = 8  # the slots a key may live in
MAX_KEY = 2**64 - 2  # keys are 0..MAX_KEY (a slot stores key + 1: zero is an empty slot)
_MAGIC = b"shopbkt1"
_HEADER = struct.Struct("<8sQQQ")  # magic, slots, lanes, salt
_HEADER_BYTES = 64
_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: Fibonacci hashing
_MASK = 2**64 - 1
_EPSILON = 1e-9  # refill is floating point: a key exactly at its rate must not miss by 1e-12


@dataclass(frozen=True, slots=True)
class Lane:
    """One limit of a table: `burst` at once, refilled at `rate` per second."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst >= 1, got {self}")


class Refusal(NamedTuple):
    """A take refused: the lane that had too little, and the seconds until it would have enough."""

    lane: int
    wait: float


class BucketTable:
    """`take(key, costs)` spends `costs[i]` from lane i of `key`'s buckets, or nothing."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        *,
        slots: int,
        path: Path | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        if slots < WINDOW or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two of at least {WINDOW}, got {slots}")
        self._lanes = tuple(lanes)
        self._rates = tuple(lane.rate for lane in self._lanes)
        self._bursts = tuple(lane.burst for lane in self._lanes)
        # A slot: key + 1, each lane's tokens, when they were counted.
        self._slot = struct.Struct(f"<Q{len(self._lanes)}dd")
        self._mask = slots - 1
        self._shift = 64 - slots.bit_length() + 1
        self._now = clock.monotonic
        size = _HEADER_BYTES + slots * self._slot.size
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, size)
            self._salt = secrets.randbits(64)
        else:
            self._fd, self._map, self._salt = _shared_map(path, size, slots, len(self._lanes))

    def take(self, key: int, costs: Sequence[float]) -> Refusal | None:
        """Spend `costs` (one per lane) from `key`'s buckets if every lane has enough; else
        spend nothing and say which lane refused and how long until it would have enough."""
        stored = key + 1
        start = (((key ^ self._salt) * _MIX) & _MASK) >> self._shift
        fd = self._fd
        if fd is not None:
            self._lock(fd, start, fcntl.LOCK_EX)
        try:
            # Read under the lock: the processes' takes then see the time in the lock's order.
            now = self._now()
            offset = _HEADER_BYTES + start * self._slot.size
            found = self._slot.unpack_from(self._map, offset)
            if found[0] != stored:  # not in its first slot (nearly always it is)
                offset, found = self._place(start, stored, now)
            counted = found[-1]
            elapsed = now - counted if now > counted else 0.0
            if now < counted:  # never write an earlier time than one read
                now = counted
            rates, bursts = self._rates, self._bursts
            left = []
            refusal = None
            for i, cost in enumerate(costs):
                have = found[i + 1] + elapsed * rates[i]
                if have > bursts[i]:
                    have = bursts[i]
                if have < cost - _EPSILON and refusal is None:
                    refusal = Refusal(i, (cost - have) / rates[i])
                left.append(have)
            if refusal is None:
                spent = zip(left, costs, strict=True)
                left = [have - cost if have > cost else 0.0 for have, cost in spent]
            self._slot.pack_into(self._map, offset, stored, *left, now)
        finally:
            if fd is not None:
                self._lock(fd, start, fcntl.LOCK_UN)
        return refusal

    def _lock(self, fd: int, start: int, operation: int) -> None:
        """Lock (or unlock) the window from slot `start`, as bytes of the file's lock space:
        two ranges when it wraps around the table's end, the higher first (so two takes never
        wait on each other in a cycle)."""
        end, slots = start + WINDOW, self._mask + 1
        fcntl.lockf(fd, operation, min(end, slots) - start, start)
        if end > slots:
            fcntl.lockf(fd, operation, end - slots, 0)

    def _place(self, start: int, stored: int, now: float) -> tuple[int, tuple[float, ...]]:
        """The offset of `stored`'s slot in its window and what it holds; for a key not there,
        the slot it takes (the first empty one, else the fullest bucket's) with full buckets."""
        unpack, size, mask = self._slot.unpack_from, self._slot.size, self._mask
        victim, fullest = -1, -1.0
        for step in range(WINDOW):
            offset = _HEADER_BYTES + ((start + step) & mask) * size
            found = unpack(self._map, offset)
            if found[0] == stored:
                return offset, found
            if found[0] == 0:  # keys never leave a slot empty: the key is not further on
                victim = offset
                break
            fill = self._fill(found[1:-1], max(0.0, now - found[-1]))
            if fill > fullest:
                victim, fullest = offset, fill
        return victim, (stored, *self._bursts, now)

    def _fill(self, tokens: tuple[float, ...], elapsed: float) -> float:
        """How full a bucket is now, as the share of its burst of its emptiest lane (1: full)."""
        return min(
            min(burst, have + elapsed * rate) / burst
            for have, rate, burst in zip(tokens, self._rates, self._bursts, strict=True)
        )

    def keys(self) -> int:
        """How many slots hold a bucket (for tests and metrics; reads the whole table)."""
        size = self._slot.size
        return sum(
            1
            for offset in range(_HEADER_BYTES, len(self._map), size)
            if struct.unpack_from("<Q", self._map, offset)[0] != 0
        )

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _shared_map(path: Path, size: int, slots: int, lanes: int) -> tuple[int, mmap.mmap, int]:
    """The table's file, made (zero-filled, with a header and a new salt) by the first worker
    that opens it; the same shape is required of the next ones."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size == 0:
                os.ftruncate(fd, size)
                header = _HEADER.pack(_MAGIC, slots, lanes, secrets.randbits(64))
                os.pwrite(fd, header, 0)
            magic, have_slots, have_lanes, salt = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
            if (magic, have_slots, have_lanes) != (_MAGIC, slots, lanes):
                raise ValueError(
                    f"{path} holds {have_lanes}-lane buckets in {have_slots} slots, "
                    f"not {lanes} in {slots}"
                )
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd, mmap.mmap(fd, size), salt
    except BaseException:
        os.close(fd)
        raise
