"""The JSON exporter against a real OTLP/HTTP receiver (`tests.otlp_collector`, in this
process): what it posts is read back span by span; a receiver that is gone costs a failed
export, never an exception in the service."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shop import tracing
from shop.otlp_json import OtlpJsonExporter
from tests.otlp_collector import running_collector
from tests.support import free_port


def _two_spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.EdgeSampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        with tracing.server_span("POST", "/orders/sync", []):
            tracing.annotate(order_id="0192")
            with tracing.span("transaction"):
                pass
    finally:
        tracing.shutdown()
    return exporter


def test_the_receiver_gets_every_span_with_its_parent_and_attributes() -> None:
    made = _two_spans().get_finished_spans()
    with running_collector() as collector:
        exporter = OtlpJsonExporter(collector.endpoint, headers={"authorization": "Bearer t"})
        assert exporter.export(made) is SpanExportResult.SUCCESS
        assert exporter.export(made[:1]) is SpanExportResult.SUCCESS  # the same connection
        exporter.shutdown()
    request = next(s for s in collector.spans if s.name == "POST /orders/sync")
    stored = next(s for s in collector.spans if s.name == "transaction")
    assert stored.parent_id == request.span_id
    assert stored.trace_id == request.trace_id
    assert request.attributes["shop.order_id"] == "0192"
    assert len(collector.spans) == 3


def test_a_receiver_that_is_gone_fails_the_export_quietly() -> None:
    exporter = OtlpJsonExporter(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert exporter.export(_two_spans().get_finished_spans()) is SpanExportResult.FAILURE
