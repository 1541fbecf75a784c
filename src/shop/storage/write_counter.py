"""A write counter shared by the worker processes of one service.

A worker that changes what a cache holds bumps the counter after its commit; a cached value is
fresh only while the counter still reads what it read before loading that value. With one
process the counter is an integer; with several (`WORKERS`), an 8-byte file that every worker
maps into memory (`SHOP_WORKER_DIR`, made by `shop serve` for its workers): reading it is a
memory read, and a bump (a write, rare) takes a file lock so that no increment is lost.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

WORKER_DIR_ENV = "SHOP_WORKER_DIR"

_COUNTER = struct.Struct("<Q")


class Generation:
    """A counter: `value()` now, `bump()` after a write; in this process only."""

    def __init__(self) -> None:
        self._value = 0

    def value(self) -> int:
        return self._value

    def bump(self) -> None:
        self._value += 1

    def close(self) -> None:
        """Release what the counter holds (nothing, in one process)."""


class SharedGeneration(Generation):
    """The counter in a file mapped by every worker of the service (no in-process state)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if os.fstat(self._fd).st_size < _COUNTER.size:
                os.ftruncate(self._fd, _COUNTER.size)  # zero-filled: a new counter reads 0
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, _COUNTER.size)
        except BaseException:
            os.close(self._fd)
            raise

    def value(self) -> int:
        value: int = _COUNTER.unpack_from(self._map)[0]
        return value

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, 0, self.value() + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def worker_file(name: str) -> Path | None:
    """The file `name` in the directory this service's workers share (`shop serve` makes it),
    or None when this process has no sibling workers."""
    directory = os.environ.get(WORKER_DIR_ENV)
    return None if directory is None else Path(directory) / name


def for_workers(name: str) -> Generation:
    """The counter `name`, shared with the sibling workers if this process has any."""
    path = worker_file(f"{name}.generation")
    return Generation() if path is None else SharedGeneration(path)
