"""A loop in a thread for the length of a `with` block (the bench's samplers, the soak's
fault schedule): started on entry; leaving the block sets `stopping` and waits for the loop."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Subclasses write `loop`, which runs until `stopping` is set (wait on it between two
    steps). `join_timeout` bounds the wait on leaving (None: until the loop has finished)."""

    join_timeout: float | None = None

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.loop, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(self.join_timeout)

    def loop(self) -> None:
        raise NotImplementedError
