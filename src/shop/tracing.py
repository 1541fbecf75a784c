"""Distributed traces (OpenTelemetry): the process's tracer, the spans the hot paths open by
hand, and the W3C context carried in message headers and outbox rows.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (`settings.Tracing`): then every helper here
returns at once after one test of `_provider`, and no OpenTelemetry code runs on any path. On,
spans are sampled by trace id (parent-based, the same ratio in every process, so a trace is
kept or dropped whole) and exported over OTLP/HTTP in batches by a task on the event loop
(`ship`, `otlp_json.Shipper`).

A batch (a group commit, a consumer's batch) has many parents: its span is the child of the
first sampled one (so that request's trace shows the batch and what follows it) and links to
all of them. An outbox row keeps the traceparent of the transaction that wrote it, so the
relay's publish of its events joins that trace; every message published carries the
traceparent of its publish span in its headers (Kafka headers, AMQP header table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes, AttributeValue

from shop.otlp_json import OtlpJsonExporter, Shipper
from shop.settings import Tracing

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext

log = logging.getLogger(__name__)

ORDER_ID = "shop.order_id"  # the attribute that names an order (search by it in Jaeger)
ORDER_IDS = "shop.order_ids"  # a batch's orders
TRACEPARENT = "traceparent"

_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None  # None: tracing is off
_shipper: Shipper | None = None  # what posts the spans `configure` set up (`ship`)
_ratio = 1.0  # the share of requests traced
_SCOPE = InstrumentationScope("shop")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_MAX_LINKS = 128  # as the SDK's default span limits
DB_SYSTEM = {"db.system.name": "mysql"}  # (MariaDB speaks MySQL's protocol, as OTel names it)


def configure(settings: Tracing, service: str) -> None:
    """Start exporting this process's spans as `service`, if an endpoint is set."""
    if not settings.endpoint or _provider is not None:
        return
    provider = TracerProvider(
        sampler=EdgeSampler(), resource=Resource.create({"service.name": service})
    )
    exporter = OtlpJsonExporter(
        settings.endpoint,
        headers=settings.header_pairs(),
        ca_file=settings.ca_file,
        timeout=settings.export_timeout_seconds,
    )
    global _shipper
    _shipper = Shipper(exporter, every=settings.export_every_seconds, limit=settings.queue_spans)
    provider.add_span_processor(_shipper)
    trace.set_tracer_provider(provider)  # (FastAPI's hooks use the global one)
    install(provider, settings.sampling_ratio)
    log.info("tracing to %s, %g of traces kept", settings.endpoint, settings.sampling_ratio)


class EdgeSampler(Sampler):
    """Traces are chosen at the edge, once: a request's span (SERVER) is made only for the
    requests `pick` chose, so a span without a parent is kept only if it is a SERVER span.
    Every other span follows its parent: the batch, the transaction and the relay's publish
    of a kept request are kept, and nothing else is (not the statements of an unchosen
    request, nor background work). A message's traceparent is a parent like any other."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        kept = parent.trace_flags.sampled if parent.is_valid else kind is SpanKind.SERVER
        if not kept:
            return SamplingResult(Decision.DROP)
        state = parent.trace_state if parent.is_valid else None
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)

    def get_description(self) -> str:
        return "EdgeSampler"


def install(provider: TracerProvider, ratio: float = 1.0) -> None:
    """Trace through `provider` from now on, choosing `ratio` of the requests (`configure`;
    tests, with an in-memory exporter)."""
    global _provider, _ratio
    _provider, _ratio = provider, ratio


def pick() -> bool:
    """Whether to trace the request arriving now: `ratio` of them, drawn here (a caller's
    `traceparent` cannot make us trace: its "sampled" flag is not obeyed)."""
    return _provider is not None and random.random() < _ratio


async def ship(stopping: asyncio.Event) -> None:
    """Post the process's spans from its event loop until `stopping` is set (a supervised
    worker of every service's runtime; nothing to do unless `configure` turned tracing on)."""
    if _shipper is not None:
        await _shipper.run(stopping)


def shutdown() -> None:
    """Export what is left and stop the exporter (at a process's end)."""
    global _provider, _shipper
    if _provider is not None:
        _provider.shutdown()
    _provider = _shipper = None


def instrument_engines(*engines: Engine) -> None:
    """A CLIENT span per statement sent through these engines while a sampled span runs, its
    child (`_statement_starts`). Statements sent on the driver's connection (the order batches,
    the relay) bypass SQLAlchemy: those units have a span by hand.

    Not OpenTelemetry's SQLAlchemy instrumentation: it began a span through the SDK for every
    statement, sampled or not (parsing the engine's URL and the statement's first word first),
    and counted every pool checkout and checkin into a meter: 35-45 us of CPU per statement of
    an unchosen request (a statement's own cost here is about 200), where this is one lookup of
    the running span (docs/performance.md, issue 23)."""
    if _provider is None:
        return
    from sqlalchemy import event

    for engine in engines:
        if not event.contains(engine, "before_cursor_execute", _statement_starts):
            event.listen(engine, "before_cursor_execute", _statement_starts)
            event.listen(engine, "after_cursor_execute", _statement_ends)
            event.listen(engine, "handle_error", _statement_fails)


def _statement_starts(
    conn: Connection,
    _cursor: object,
    statement: str,
    _parameters: object,
    context: ExecutionContext | None,
    _executemany: bool,
) -> None:
    parent = trace.get_current_span().get_span_context()
    if context is None or not parent.trace_flags.sampled:
        return
    url = conn.engine.url
    words = statement.lstrip()[:32].split(maxsplit=1)  # (a batch's INSERT runs to megabytes)
    operation = words[0].upper() if words else "SQL"
    attributes: dict[str, AttributeValue] = {
        **DB_SYSTEM,
        "db.namespace": url.database or "",
        "db.operation.name": operation,
        "db.query.text": statement,
        "server.address": url.host or "",
        "server.port": url.port or 3306,
    }
    name = f"{operation} {url.database}" if url.database else operation
    context._shop_span = _Recording(name, SpanKind.CLIENT, parent, attributes)  # type: ignore[attr-defined]


def _statement_ends(
    _conn: object,
    _cursor: object,
    _statement: object,
    _parameters: object,
    context: ExecutionContext | None,
    _executemany: bool,
) -> None:
    opened: _Recording | None = getattr(context, "_shop_span", None)
    if opened is not None:
        opened.end()


def _statement_fails(error: ExceptionContext) -> None:
    opened: _Recording | None = getattr(error.execution_context, "_shop_span", None)
    if opened is not None:
        _failed(opened, error.original_exception)
        opened.end()


def _failed(opened: Span, exc: BaseException) -> None:
    """`opened` ends in error: `exc` named in its status."""
    opened.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")


def enabled() -> bool:
    return _provider is not None


def current() -> SpanContext | None:
    """The context of the span running now, if it is sampled (only those are worth carrying)."""
    if _provider is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.trace_flags.sampled else None


def running() -> SpanContext | None:
    """The context of the span running now, sampled or not (what a log line is part of)."""
    if _provider is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def traceparent() -> str | None:
    """The W3C traceparent of the span running now (None: off, or not sampled)."""
    context = current()
    return None if context is None else _format(context)


def headers(span: Span | None = None) -> dict[str, str] | None:
    """Message headers that carry `span` (by default the span running now), if sampled."""
    if span is None:
        value = traceparent()
    else:
        context = span.get_span_context()
        value = _format(context) if context.trace_flags.sampled else None
    return None if value is None else {TRACEPARENT: value}


def parse(value: str | bytes | None) -> SpanContext | None:
    """The sampled span context a traceparent names; None for anything else (it is read from
    brokers: a malformed value is ignored, never an error)."""
    if _provider is None:
        return None
    context = _read(value)
    return context if context is not None and context.trace_flags.sampled else None


def _read(value: str | bytes | None) -> SpanContext | None:
    if not value:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > 64:
        return None
    context = trace.get_current_span(_W3C.extract({TRACEPARENT: value})).get_span_context()
    return context if context.is_valid else None


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parents: Sequence[SpanContext | None] | None = None,
    attributes: Mapping[str, str | int | Sequence[str]] | None = None,
) -> Iterator[Span | None]:
    """A span around the block, current inside it; None (and nothing done) when tracing is off
    or what it would belong to is not traced.

    Without `parents` it is the child of the span running now, if one is. With them (a batch's
    members) it is the child of the first traced one and links to every traced one.
    """
    if _provider is None:
        yield None
        return
    links: Sequence[Link] = ()
    if parents is None:
        parent = trace.get_current_span().get_span_context()
        if not parent.trace_flags.sampled:
            yield None
            return
    else:
        known = [p for p in parents if p is not None]
        if not known:
            yield None
            return
        parent = known[0]
        links = [Link(p) for p in known[:_MAX_LINKS]]
    opened = _Recording(name, kind, parent, attributes, links)
    with _current(opened):
        yield opened


@contextlib.contextmanager
def _current(opened: Span) -> Iterator[None]:
    """`opened` current inside the block and ended after it, with the block's exception if it
    raised (what the SDK's `start_as_current_span` does, in one generator instead of three:
    a span costs 50 us of CPU as it is)."""
    token = otel_context.attach(trace.set_span_in_context(opened))
    try:
        yield
    except Exception as exc:  # (not BaseException: GeneratorExit and cancellation are not errors)
        opened.record_exception(exc)
        _failed(opened, exc)
        raise
    finally:
        otel_context.detach(token)
        opened.end()


@contextlib.contextmanager
def spans(
    name: str,
    parents: Sequence[SpanContext | None],
    *,
    kind: SpanKind,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[list[Span | None]]:
    """A span per parent, its child (None where the parent is None), none of them current; all
    end with the block, with its exception if it raised. Only when tracing is on."""
    assert _provider is not None
    opened: list[Span | None] = [
        None if parent is None else _Recording(name, kind, parent, attributes) for parent in parents
    ]
    try:
        yield opened
    except BaseException as exc:
        for each in opened:
            if each is not None:
                each.record_exception(exc)
                each.set_status(StatusCode.ERROR, repr(exc))
        raise
    finally:
        for each in opened:
            if each is not None:
                each.end()


@contextlib.contextmanager
def server_span(method: str, route: str, headers: Iterable[tuple[bytes, bytes]]) -> Iterator[Span]:
    """The SERVER span of a request `pick` chose, answered on the fast path (FastAPI traces its
    own): in the caller's trace when it sent a valid `traceparent` (kept whatever its flags
    say: we chose to trace it), else the root of a new one."""
    assert _provider is not None
    parent = None
    for name, value in headers:
        if name == b"traceparent":
            parent = _read(value)
            break
    attributes = {"http.request.method": method, "http.route": route, "url.path": route}
    opened = _Recording(f"{method} {route}", SpanKind.SERVER, parent, attributes)
    with _current(opened):
        yield opened


def annotate(**attributes: int | tuple[str, ...] | object) -> None:
    """Set `shop.<name>` attributes on the span running now (an order's id on its request's
    span); values other than numbers and tuples are set as text."""
    if _provider is None:
        return
    current_span = trace.get_current_span()
    if current_span.is_recording():
        for name, value in attributes.items():
            kept = value if isinstance(value, int | tuple) else str(value)
            current_span.set_attribute(f"shop.{name}", kept)


def ids(values: Iterable[object]) -> tuple[str, ...]:
    """Attribute values naming several things (a batch's order ids)."""
    return tuple(str(v) for v in values)


class _Recording(Span):
    """A sampled span of ours, for the spans this module opens by hand (requests on the fast
    path, publishes, batches, transactions): it keeps what it is told and, when it ends, hands
    one `ReadableSpan` to the provider's span processors, as the SDK's spans do. The SDK's own
    span made and ended cost 25 us (a lock, bounded attribute and event containers, the sampler,
    a second copy at its end); this about 4 (docs/performance.md, issue 23). Spans of the
    instrumentations (FastAPI, SQLAlchemy) stay the SDK's, children of these through the
    context as any span's.

    Made only where its trace is kept: the request `pick` chose, or a sampled parent."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_start",
        "_status",
    )

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        parent: SpanContext | None,
        attributes: Mapping[str, AttributeValue] | None,
        links: Sequence[Link] = (),
    ) -> None:
        trace_id = (random.getrandbits(128) or 1) if parent is None else parent.trace_id
        state = None if parent is None else parent.trace_state
        self._context = SpanContext(trace_id, random.getrandbits(64) or 1, False, _SAMPLED, state)
        self._name = name
        self._kind = kind
        self._parent = parent
        self._attributes = {k: _kept(v) for k, v in attributes.items()} if attributes else {}
        self._links = links
        self._events: list[Event] = []
        self._status = Status(StatusCode.UNSET)
        self._start = time.time_ns()
        self._end: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end is None:  # (an ended span changes no more, as the SDK's)
            self._attributes[key] = _kept(value)

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end is None:
            self._events.append(Event(name, attributes, timestamp))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, StatusCode):
            status = Status(status, description if status is StatusCode.ERROR else None)
        if self._end is None and self._status.status_code is not StatusCode.OK:  # (OK is final)
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The SDK's own: it describes the exception and calls `add_event`, which is ours here.
        SdkSpan.record_exception(self, exception, attributes, timestamp, escaped)  # type: ignore[arg-type]

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None or _provider is None:  # (none: tracing stopped meanwhile)
            return
        self._end = end_time or time.time_ns()
        # The provider's span processors, which its own spans end into (no public way to them).
        _provider._active_span_processor.on_end(
            ReadableSpan(
                self._name,
                self._context,
                self._parent,
                _provider.resource,
                self._attributes,
                self._events,
                self._links,
                self._kind,
                status=self._status,
                start_time=self._start,
                end_time=self._end,
                instrumentation_scope=_SCOPE,
            )
        )


def _kept(value: AttributeValue) -> AttributeValue:
    """An attribute's value as the SDK keeps it: a list as a tuple (a span's values do not
    change after they are set)."""
    return tuple(value) if isinstance(value, list) else value


def _format(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
