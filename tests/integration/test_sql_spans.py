"""A statement sent through SQLAlchemy inside a traced span is a span of its own, the child of
that span (`tracing.instrument_engines`); outside a traced span it makes none. Against the real
MariaDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
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
    tracing.instrument_engines(database.sync_engine)  # (twice: still one span a statement)
    try:
        yield exporter
    finally:  # (the listeners stay on the suite's engine: with tracing off they make nothing)
        tracing.shutdown()


def _statements(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


async def test_a_statement_in_a_traced_span_is_its_child(
    database: AsyncEngine, spans: InMemorySpanExporter
) -> None:
    with tracing.server_span("GET", "/products/{product_id}", []) as request:
        async with database.connect() as conn:
            assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
    async with database.connect() as conn:  # no traced span: no statement span either
        assert (await conn.execute(text("SELECT 43"))).scalar() == 43

    statements = _statements(spans)
    assert len(statements) == 1, [(s.name, s.attributes) for s in statements]
    (statement,) = statements
    assert statement.parent is not None
    assert statement.parent.span_id == request.get_span_context().span_id
    assert statement.context is not None
    assert statement.context.trace_id == request.get_span_context().trace_id
    attributes = dict(statement.attributes or {})
    assert attributes["db.query.text"] == "SELECT 41 + 1"
    assert attributes["db.operation.name"] == "SELECT"
    assert attributes["db.system.name"] == "mysql"
    assert attributes["db.namespace"] == database.url.database
    assert statement.name == f"SELECT {database.url.database}"
    assert statement.status.status_code is StatusCode.UNSET


async def test_a_statement_that_fails_ends_its_span_as_an_error(
    database: AsyncEngine, spans: InMemorySpanExporter
) -> None:
    with tracing.server_span("GET", "/products", []):
        async with database.connect() as conn:
            with pytest.raises(ProgrammingError):
                await conn.execute(text("SELECT * FROM no_such_table_here"))

    (statement,) = _statements(spans)
    assert statement.status.status_code is StatusCode.ERROR
    assert "no_such_table_here" in (statement.status.description or "")
    assert statement.end_time is not None
