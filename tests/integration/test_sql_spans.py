"""A statement sent through SQLAlchemy inside a traced span is a span of its own, the child of
that span (OpenTelemetry's SQLAlchemy instrumentation, `tracing.instrument_engines`); outside a
traced span it makes none. Against the real MariaDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import tracing

pytestmark = pytest.mark.integration


@pytest.fixture
def spans(database: AsyncEngine) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.EdgeSampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    tracing.instrument_engines(database.sync_engine)
    try:
        yield exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        tracing.shutdown()


async def test_a_statement_in_a_traced_span_is_its_child(
    database: AsyncEngine, spans: InMemorySpanExporter
) -> None:
    with tracing.server_span("GET", "/products/{product_id}", []) as request:
        async with database.connect() as conn:
            assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
    async with database.connect() as conn:  # no traced span: no statement span either
        assert (await conn.execute(text("SELECT 43"))).scalar() == 43

    statements = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT and s.name != "connect"
    ]
    assert len(statements) == 1, [(s.name, s.attributes) for s in statements]
    (statement,) = statements
    assert statement.parent is not None
    assert statement.parent.span_id == request.get_span_context().span_id
    assert statement.context is not None
    assert statement.context.trace_id == request.get_span_context().trace_id
    assert "SELECT 41 + 1" in str(dict(statement.attributes or {}).values())
