"""Tracing's rules without servers: off is a no-op, a batch span is the child of its first member
and links to all, a traceparent read off a broker is parsed or ignored (never an error), a
caller cannot force a trace to be kept, and log lines carry the span they were written in."""

from __future__ import annotations

import asyncio
import json
import logging

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode

from shop import otlp_json, tracing
from shop.runtime.logs import JsonFormatter
from shop.storage.group_commit import Coalescer

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def test_off_nothing_is_traced_or_carried() -> None:
    assert not tracing.enabled()
    with tracing.span("anything") as opened:
        assert opened is None
        assert tracing.traceparent() is None
        assert tracing.headers() is None
        assert tracing.running() is None
    assert tracing.parse(VALID) is None  # not even parsed


def test_a_batch_span_is_the_child_of_its_first_member_and_links_to_all(
    spans: InMemorySpanExporter,
) -> None:
    members = []
    for name in ("first", "second", "third"):
        with tracing.server_span("POST", f"/{name}", []):
            members.append(tracing.current())
    with tracing.span("batch", parents=[None, *members]) as batch:
        assert batch is not None
        with tracing.span("inside"):
            pass
    finished = _named(spans, "batch")
    assert finished.parent is not None
    assert members[0] is not None
    assert finished.parent.span_id == members[0].span_id
    assert finished.context.trace_id == members[0].trace_id
    assert [link.context.span_id for link in finished.links] == [m.span_id for m in members if m]
    inside = _named(spans, "inside")
    assert inside.parent is not None
    assert inside.parent.span_id == finished.context.span_id


def test_a_message_carries_its_publish_span_to_the_consumer(spans: InMemorySpanExporter) -> None:
    with (
        tracing.server_span("POST", "/orders/async/kafka", []),
        tracing.span("publish", kind=SpanKind.PRODUCER) as publish,
    ):
        headers = tracing.headers()
    assert headers is not None
    assert publish is not None
    received = tracing.parse(headers[tracing.TRACEPARENT].encode())  # as a broker hands it over
    assert received is not None
    assert received.span_id == publish.get_span_context().span_id
    assert received.is_remote


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_any_traceparent_off_the_wire_is_parsed_or_ignored(value: str | bytes) -> None:
    tracing.install(TracerProvider(sampler=tracing.EdgeSampler()))
    try:
        context = tracing.parse(value)
        assert context is None or (context.is_valid and context.trace_flags.sampled)
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    "value",
    [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        VALID + "-" + "x" * 40,  # longer than any traceparent
        b"\xff\xfe",
    ],
)
def test_what_names_no_sampled_span_is_ignored(
    spans: InMemorySpanExporter, value: str | bytes
) -> None:
    assert tracing.parse(value) is None


def test_the_share_of_requests_traced_is_drawn_here() -> None:
    tracing.install(TracerProvider(sampler=tracing.EdgeSampler()), ratio=0.0)
    try:
        assert not any(tracing.pick() for _ in range(1000))
    finally:
        tracing.shutdown()
    tracing.install(TracerProvider(sampler=tracing.EdgeSampler()), ratio=0.25)
    try:
        assert 150 < sum(tracing.pick() for _ in range(1000)) < 350
    finally:
        tracing.shutdown()


def test_what_no_chosen_request_began_is_not_traced(spans: InMemorySpanExporter) -> None:
    """Statements and batches outside a traced request make no span: not even a root."""
    with tracing.span("transaction", kind=SpanKind.CLIENT) as alone:
        assert alone is None
    with tracing.span("group commit", parents=[None, None]) as batch:
        assert batch is None
    tracer = trace.get_tracer("elsewhere", tracer_provider=tracing._provider)
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as statement:
        assert not statement.is_recording()  # (an instrumentation's, say)
    assert spans.get_finished_spans() == ()


def test_a_chosen_request_is_traced_whatever_its_callers_flags(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = VALID[:-2] + "00"
    with tracing.server_span("POST", "/orders/sync", [(b"traceparent", unsampled.encode())]):
        assert trace.get_current_span().is_recording()
    assert _named(spans, "POST /orders/sync").context.trace_id == int(VALID.split("-")[1], 16)


def test_a_request_span_continues_its_callers_trace(spans: InMemorySpanExporter) -> None:
    with tracing.server_span("POST", "/orders/sync", [(b"traceparent", VALID.encode())]) as span:
        tracing.annotate(order_id="0192", batch=3)
    finished = _named(spans, "POST /orders/sync")
    assert finished.kind is SpanKind.SERVER
    assert finished.context.trace_id == int(VALID.split("-")[1], 16)
    assert finished.parent is not None
    assert finished.parent.span_id == int(VALID.split("-")[2], 16)
    assert finished.attributes is not None
    assert finished.attributes["shop.order_id"] == "0192"
    assert finished.attributes["shop.batch"] == 3
    assert span is not None


def test_a_span_is_current_inside_its_block_and_ends_with_its_error(
    spans: InMemorySpanExporter,
) -> None:
    inside = []

    def fail() -> None:
        with tracing.span("transaction") as inner:
            inside.append(trace.get_current_span() is inner)
            raise ValueError("no stock")

    with tracing.server_span("POST", "/orders/sync", []) as request:
        with pytest.raises(ValueError, match="no stock"):
            fail()
        assert inside == [True]
        assert trace.get_current_span() is request  # the inner span's context is left
    assert not trace.get_current_span().get_span_context().is_valid
    failed = _named(spans, "transaction")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: no stock"
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.end_time is not None
    assert _named(spans, "POST /orders/sync").status.status_code is StatusCode.UNSET


def test_a_span_ends_once_with_what_it_was_told(spans: InMemorySpanExporter) -> None:
    with tracing.server_span("POST", "/orders/sync", []) as request:
        request.set_attribute("shop.order_ids", ["a", "b"])
        request.record_exception(KeyError("gone"))
    request.end()  # a second end is a no-op, as the SDK's
    request.set_attribute("shop.late", 1)  # after its end: not exported
    (finished,) = spans.get_finished_spans()
    assert not request.is_recording()
    assert finished.attributes is not None
    assert finished.attributes["shop.order_ids"] == ("a", "b")  # kept immutable, as the SDK does
    assert "shop.late" not in finished.attributes
    (event,) = finished.events
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "KeyError"
    assert event.attributes["exception.message"] == "'gone'"
    assert "KeyError" in str(event.attributes["exception.stacktrace"])
    assert finished.kind is SpanKind.SERVER
    assert finished.start_time is not None
    assert finished.end_time is not None
    assert finished.start_time <= finished.end_time


def test_spans_per_row_each_join_their_rows_trace_and_end_with_the_block(
    spans: InMemorySpanExporter,
) -> None:
    parents = [tracing.parse(VALID), None]
    opened: list[Span | None] = []

    def publish() -> None:
        with tracing.spans("publish events", parents, kind=SpanKind.PRODUCER) as spans_:
            opened.extend(spans_)
            raise RuntimeError("kafka down")

    with pytest.raises(RuntimeError):
        publish()
    assert opened[1] is None
    assert opened[0] is not None
    assert tracing.headers(opened[0]) is not None
    finished = _named(spans, "publish events")
    assert finished.parent is not None
    assert finished.parent.span_id == int(VALID.split("-")[2], 16)
    assert not finished.status.is_ok
    assert finished.end_time is not None


async def test_a_group_commit_batch_is_traced_from_its_requests(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[trace.Span] = []

    async def handler(requests: object) -> list[int]:
        seen.append(trace.get_current_span())
        return [1, 2]

    coalescer: Coalescer[str, int] = Coalescer(handler, max_batch=10, max_pending=10, timeout=5)

    async def request(name: str) -> int:
        with tracing.server_span("POST", name, []):
            return await coalescer.submit(name)

    stopping = asyncio.Event()
    runner = asyncio.create_task(coalescer.run(stopping))
    assert list(await asyncio.gather(request("a"), request("b"))) == [1, 2]
    stopping.set()
    await runner
    batch = _named(spans, "group commit")
    first, second = _named(spans, "POST a"), _named(spans, "POST b")
    assert batch.parent is not None
    assert batch.parent.span_id == first.context.span_id
    assert {link.context.span_id for link in batch.links} == {
        first.context.span_id,
        second.context.span_id,
    }
    assert seen[0].get_span_context().span_id == batch.context.span_id  # the handler ran in it
    assert batch.attributes is not None
    assert batch.attributes["shop.batch.size"] == 2


async def test_a_group_commit_span_names_only_the_requests_it_traces(
    spans: InMemorySpanExporter,
) -> None:
    async def handler(requests: object) -> list[int]:
        return [1, 2]

    coalescer: Coalescer[str, int] = Coalescer(
        handler,
        max_batch=10,
        max_pending=10,
        timeout=5,
        describe=lambda traced: {"shop.order_ids": list(traced)},
    )

    async def traced_request() -> int:
        with tracing.server_span("POST", "/orders/sync", []):
            return await coalescer.submit("traced")

    stopping = asyncio.Event()
    runner = asyncio.create_task(coalescer.run(stopping))
    assert list(await asyncio.gather(traced_request(), coalescer.submit("untraced"))) == [1, 2]
    stopping.set()
    await runner
    batch = _named(spans, "group commit")
    assert batch.attributes is not None
    assert batch.attributes["shop.batch.size"] == 2
    assert batch.attributes["shop.order_ids"] == ("traced",)


def test_a_log_line_carries_its_span_and_its_order(spans: InMemorySpanExporter) -> None:
    record = logging.LogRecord("shop.orders", logging.DEBUG, __file__, 1, "order placed", (), None)
    record.order_id = "0192"
    with tracing.server_span("GET", "/request", []) as span:
        line = json.loads(JsonFormatter().format(record))
    assert span is not None
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert line["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert line["order_id"] == "0192"
    outside = json.loads(JsonFormatter().format(record))
    assert "trace_id" not in outside


def test_spans_go_out_in_otlp_json(spans: InMemorySpanExporter) -> None:
    """The exporter's encoding: hex ids, OTLP's span kinds, int64 as text, arrays, links."""
    with tracing.server_span("POST", "/orders/sync", []) as request:
        tracing.annotate(order_id="0192", batch=3)
        with tracing.span("group commit", parents=[tracing.current()], attributes={"ids": ["a"]}):
            pass
    assert request is not None
    body = orjson.loads(otlp_json.encode(spans.get_finished_spans()))
    (resource,) = body["resourceSpans"]
    encoded = {s["name"]: s for scope in resource["scopeSpans"] for s in scope["spans"]}
    server, batch = encoded["POST /orders/sync"], encoded["group commit"]
    context = request.get_span_context()
    assert server["traceId"] == f"{context.trace_id:032x}"
    assert server["spanId"] == f"{context.span_id:016x}"
    assert "parentSpanId" not in server
    assert server["kind"] == 2  # SERVER in OTLP
    attributes = {a["key"]: a["value"] for a in server["attributes"]}
    assert attributes["shop.order_id"] == {"stringValue": "0192"}
    assert attributes["shop.batch"] == {"intValue": "3"}
    assert int(server["endTimeUnixNano"]) >= int(server["startTimeUnixNano"]) > 0
    assert batch["parentSpanId"] == server["spanId"]
    assert batch["links"][0]["spanId"] == server["spanId"]
    assert batch["kind"] == 1  # INTERNAL
    assert {"key": "ids", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}} in batch[
        "attributes"
    ]
