"""`Database.transact` runs a unit of work again only when it is known not to have committed:
the connection lost before COMMIT, a deadlock or Galera certification conflict (1213), a node
not ready (1047); never when COMMIT's outcome is unknown. Fakes stand in for the connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import asyncmy.errors
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shop.settings import Database as DbSettings
from shop.storage import database as db_module
from shop.storage.database import Database
from tests.clock import FakeClock

LOST = 2013  # "Lost connection to server during query"


def _error(code: int, *, invalidated: bool = False) -> DBAPIError:
    orig = asyncmy.errors.OperationalError(code, f"error {code}")
    return OperationalError("COMMIT", None, orig, connection_invalidated=invalidated)


class _Script:
    """What each attempt does: fail in the work, fail at COMMIT, or succeed."""

    def __init__(self, *steps: tuple[str, DBAPIError | None]) -> None:
        self.steps = list(steps)
        self.commits = 0


class _FakeDatabase(Database):
    def __init__(self, script: _Script) -> None:
        self.clock = FakeClock()
        super().__init__(
            cast(AsyncEngine, None),
            reads=cast(AsyncEngine, None),
            db=DbSettings(timeout_seconds=1.0),
            clock=self.clock,
        )
        self.script = script
        self.attempts = 0

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._transaction()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        self.attempts += 1
        stage, error = self.script.steps.pop(0) if self.script.steps else ("ok", None)
        if stage == "work" and error is not None:
            raise error
        yield cast(AsyncConnection, object())
        if stage == "commit" and error is not None:
            raise error
        self.script.commits += 1


async def _work(_conn: AsyncConnection) -> str:
    return "done"


async def _transact(*steps: tuple[str, DBAPIError | None]) -> tuple[_FakeDatabase, Any]:
    database = _FakeDatabase(_Script(*steps))
    return database, await database.transact(_work)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(("work", _error(LOST, invalidated=True)), id="connection-lost-before-commit"),
        pytest.param(("work", _error(2003)), id="cannot-connect"),
        pytest.param(("work", _error(1213)), id="deadlock"),
        pytest.param(("commit", _error(1213)), id="galera-certification-conflict-at-commit"),
        pytest.param(("work", _error(1047)), id="galera-node-not-ready"),
    ],
)
async def test_work_known_not_committed_is_run_again_once_it_succeeds(
    failure: tuple[str, DBAPIError],
) -> None:
    database, result = await _transact(failure)
    assert result == "done"
    assert database.attempts == 2
    assert database.script.commits == 1
    assert database.clock.slept == [0.05]


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(("commit", _error(LOST, invalidated=True)), id="connection-lost-in-commit"),
        pytest.param(("commit", _error(1180)), id="error-during-commit"),
        pytest.param(("work", _error(1180)), id="error-1180-anywhere"),
        pytest.param(("work", _error(1062)), id="duplicate-key"),
    ],
)
async def test_work_whose_outcome_is_unknown_or_refused_is_not_run_again(
    failure: tuple[str, DBAPIError],
) -> None:
    database = _FakeDatabase(_Script(failure))
    with pytest.raises(DBAPIError):
        await database.transact(_work)
    assert database.attempts == 1
    assert database.script.commits == 0
    assert database.clock.slept == []


async def test_retries_stop_after_three_pauses_longer_each_time() -> None:
    deadlocks: list[tuple[str, DBAPIError | None]] = [("work", _error(1213))] * 10
    database = _FakeDatabase(_Script(*deadlocks))
    with pytest.raises(DBAPIError) as raised:
        await database.transact(_work)
    assert db_module.error_code(raised.value) == 1213
    assert database.attempts == 4
    assert database.script.commits == 0
    assert database.clock.slept == [0.05, 0.4, 1.5]


async def test_a_failure_known_not_committed_is_judged_afresh_on_each_try() -> None:
    steps: list[tuple[str, DBAPIError | None]] = [
        ("commit", _error(1213)),  # certification conflict: run again
        ("commit", _error(LOST, invalidated=True)),  # lost in COMMIT: unknown, never again
    ]
    database = _FakeDatabase(_Script(*steps))
    with pytest.raises(DBAPIError) as raised:
        await database.transact(_work)
    assert db_module.error_code(raised.value) == LOST
    assert database.attempts == 2


def test_a_node_out_of_the_cluster_counts_as_a_disconnect() -> None:
    class _Context:
        original_exception: BaseException | None = asyncmy.errors.OperationalError(1047, "x")
        is_disconnect = False

    context = _Context()
    handler = cast(Callable[[Any], None], db_module._drop_connections_of_a_node_out_of_the_cluster)
    handler(context)
    assert context.is_disconnect
    context.original_exception = asyncmy.errors.OperationalError(1213, "x")
    context.is_disconnect = False
    handler(context)
    assert not context.is_disconnect
