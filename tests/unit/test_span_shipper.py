"""The span shipper's rules, with an exporter that keeps what it is given: every span ended
goes out once, in order, in batches of at most `batch`, up to the queue's limit; a full batch
goes at once and a part batch after `every`; the encoding runs on the event loop and the post
off it; stopping is prompt and shutdown posts what is left."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from shop import otlp_json
from shop.otlp_json import OtlpJsonExporter, Shipper
from tests.support import eventually

RESOURCE = Resource.create({"service.name": "test"})


class Kept(OtlpJsonExporter):
    """Keeps each posted body's span names and the thread that posted it."""

    def __init__(self, answer: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        super().__init__("http://127.0.0.1:1")
        self.batches: list[list[str]] = []
        self.threads: list[int] = []
        self.complaints: list[str] = []
        self.closed = False
        self.answer = answer

    def post(self, body: bytes) -> SpanExportResult:
        decoded: dict[str, Any] = orjson.loads(body)
        names = [
            span["name"]
            for resource in decoded["resourceSpans"]
            for scope in resource["scopeSpans"]
            for span in scope["spans"]
        ]
        self.batches.append(names)
        self.threads.append(threading.get_ident())
        return self.answer

    def complain(self, what: str) -> None:
        self.complaints.append(what)

    def shutdown(self) -> None:
        self.closed = True

    def names(self) -> list[str]:
        return [name for batch in self.batches for name in batch]


def ended(name: str) -> ReadableSpan:
    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    return ReadableSpan(name, context, resource=RESOURCE, start_time=1, end_time=2)


@given(count=st.integers(0, 60), batch=st.integers(1, 16), limit=st.integers(1, 40))
def test_every_span_goes_once_in_order_in_batches_up_to_the_limit(
    count: int, batch: int, limit: int
) -> None:
    exporter = Kept()
    shipper = Shipper(exporter, every=60, limit=limit, batch=batch)
    for n in range(count):
        shipper.on_end(ended(str(n)))
    shipper.shutdown()
    assert exporter.names() == [str(n) for n in range(min(count, limit))]
    assert all(0 < len(b) <= batch for b in exporter.batches)
    assert exporter.closed
    shipper.on_end(ended("late"))  # (after shutdown: dropped, never posted)
    assert "late" not in exporter.names()


def _until(predicate: Callable[[], object]) -> Awaitable[object]:
    """`tests.support.eventually` of a plain predicate (its probe is awaited)."""
    return eventually(lambda: asyncio.sleep(0, predicate()), timeout=5, interval=0.005)


def test_a_full_batch_goes_at_once_and_is_encoded_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded_on: list[int] = []
    real = otlp_json.encode

    def encode(spans: Any) -> bytes:
        encoded_on.append(threading.get_ident())
        return real(spans)

    async def scenario() -> None:
        exporter = Kept()
        shipper = Shipper(exporter, every=60, limit=100, batch=3)
        stopping = asyncio.Event()
        task = asyncio.create_task(shipper.run(stopping))
        await asyncio.sleep(0.01)
        for n in range(3):
            shipper.on_end(ended(str(n)))
        await _until(lambda: exporter.batches)  # long before `every`
        assert exporter.batches == [["0", "1", "2"]]
        loop_thread = threading.get_ident()
        assert encoded_on == [loop_thread]
        assert exporter.threads[0] != loop_thread  # the post waits off the loop
        stopping.set()
        async with asyncio.timeout(1):  # prompt, though `every` is a minute
            await task

    monkeypatch.setattr(otlp_json, "encode", encode)  # (the module's name, which `Shipper` calls)
    asyncio.run(scenario())


def test_a_part_batch_goes_after_every_and_one_ended_on_another_thread_goes_too() -> None:
    async def scenario() -> None:
        exporter = Kept()
        shipper = Shipper(exporter, every=0.05, limit=100, batch=10)
        stopping = asyncio.Event()
        task = asyncio.create_task(shipper.run(stopping))
        shipper.on_end(ended("here"))
        await _until(lambda: exporter.names() == ["here"])
        elsewhere = threading.Thread(target=lambda: shipper.on_end(ended("there")))
        elsewhere.start()
        elsewhere.join()
        await _until(lambda: exporter.names() == ["here", "there"])
        stopping.set()
        await task

    asyncio.run(scenario())


def test_spans_over_the_limit_are_dropped_and_said() -> None:
    async def scenario() -> None:
        exporter = Kept()
        shipper = Shipper(exporter, every=0.05, limit=4, batch=10)
        for n in range(7):
            shipper.on_end(ended(str(n)))
        stopping = asyncio.Event()
        task = asyncio.create_task(shipper.run(stopping))
        await _until(lambda: exporter.complaints)
        assert exporter.names() == ["0", "1", "2", "3"]
        assert exporter.complaints == ["3 spans over the queue's 4"]
        stopping.set()
        await task

    asyncio.run(scenario())


def test_one_task_ships_a_process_s_spans() -> None:
    async def scenario() -> None:
        shipper = Shipper(Kept(), every=60, limit=10)
        stopping = asyncio.Event()
        first = asyncio.create_task(shipper.run(stopping))
        await asyncio.sleep(0.01)
        async with asyncio.timeout(1):
            await shipper.run(stopping)  # a second returns at once
        stopping.set()
        await first

    asyncio.run(scenario())


def test_a_failed_post_stops_the_flush_and_reports_it() -> None:
    shipper = Shipper(Kept(SpanExportResult.FAILURE), every=60, limit=10, batch=2)
    for n in range(5):
        shipper.on_end(ended(str(n)))
    assert shipper.force_flush() is False
