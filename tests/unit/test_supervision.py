"""`keep_trying`, the one retry of the background work: it pauses as its schedule says, and
starts no try once the service stops. The clock is a fake: no test waits."""

from __future__ import annotations

import asyncio

import pytest

from shop.supervision import RESTART_WAIT, keep_trying
from tests.clock import FakeClock


async def test_failed_tries_are_made_again_after_pauses_that_double_up_to_the_most() -> None:
    clock = FakeClock()
    reported: list[tuple[str, float]] = []
    tries = 0

    async def attempt() -> str:
        nonlocal tries
        tries += 1
        if tries < 8:
            raise ConnectionError(f"down {tries}")
        return "done"

    done = await keep_trying(
        attempt,
        asyncio.Event(),
        wait=RESTART_WAIT,
        on_failure=lambda error, pause: reported.append((str(error), pause)),
        clock=clock,
    )
    assert done == "done"
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert reported == [(f"down {n}", pause) for n, pause in enumerate(clock.slept, start=1)]


async def test_once_the_service_stops_no_try_starts() -> None:
    clock = FakeClock()
    stopping = asyncio.Event()
    tries = 0

    async def attempt() -> str:
        nonlocal tries
        tries += 1
        stopping.set()  # the service stops while this try fails
        raise ConnectionError("down")

    kept = keep_trying(
        attempt, stopping, wait=RESTART_WAIT, on_failure=lambda *_: None, clock=clock
    )
    assert await kept is None
    assert tries == 1


async def test_an_error_that_is_no_failure_of_the_try_is_not_retried() -> None:
    async def attempt() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await keep_trying(attempt, asyncio.Event(), wait=RESTART_WAIT, on_failure=lambda *_: None)
