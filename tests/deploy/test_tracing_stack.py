"""`make up TRACING=1` and `make cluster TRACING=1`, read without starting anything: the Jaeger
configuration devstack writes, its ports, the environment that sends the services' traces to it,
and the order in which `devstack` starts and stops it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import devstack
from devstack import cli, jaeger, layout, services
from devstack.common import repo_root
from devstack.settings import StackSettings, load_stack_settings

TRACING = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER_ARG"}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StackSettings:
    monkeypatch.chdir(tmp_path)  # no config.yaml: the defaults
    for name in ("JAEGER_UI_PORT", "JAEGER_OTLP_PORT", "SHOP_CONFIG", *TRACING):
        monkeypatch.delenv(name, raising=False)
    return load_stack_settings(product_service_port=18080, order_service_port=18081)


def _endpoints(tree: Any) -> Iterator[str]:
    """Every `endpoint` in the configuration: what Jaeger listens on."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "endpoint":
                yield str(value)
            else:
                yield from _endpoints(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _endpoints(item)


def test_jaeger_takes_otlp_over_http_and_answers_queries_on_loopback_only(
    settings: StackSettings,
) -> None:
    config = yaml.safe_load(jaeger.config(settings))
    assert config["receivers"] == {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:4318"}}}}
    query = config["extensions"]["jaeger_query"]
    assert query["http"]["endpoint"] == "127.0.0.1:16686"
    endpoints = list(_endpoints(config))
    assert len(endpoints) == 3  # OTLP/HTTP, the query API over HTTP and over gRPC: nothing else
    assert all(endpoint.startswith("127.0.0.1:") for endpoint in endpoints), endpoints
    # the collector's own metrics would listen on 8888: off
    assert config["service"]["telemetry"]["metrics"] == {"level": "none"}
    assert query["enable_tracing"] is False  # the UI lists the shop's services, not Jaeger
    assert jaeger.daemon(settings).ports == (16686, 4318)


def test_jaeger_serves_our_trace_viewer_where_its_ui_would_be(settings: StackSettings) -> None:
    """A Jaeger built from the Go module has no UI (a placeholder page): the query service serves
    the viewer's directory in the checkout instead (at / and every path that is no API route)."""
    config = yaml.safe_load(jaeger.config(settings))
    assets = Path(config["extensions"]["jaeger_query"]["ui"]["assets_path"])
    assert assets == jaeger.viewer()
    assert assets.is_absolute()  # Jaeger runs in its own directory
    assert assets.relative_to(repo_root()) == Path("tools/trace-viewer")
    page = (assets / "index.html").read_text()
    assert page.startswith("<!doctype html>")
    assert "/api/traces" in page


def test_the_traces_received_are_the_traces_queried(settings: StackSettings) -> None:
    config = yaml.safe_load(jaeger.config(settings))
    service = config["service"]
    assert service["pipelines"] == {
        "traces": {
            "receivers": ["otlp"],
            "processors": ["batch"],
            "exporters": ["jaeger_storage_exporter"],
        }
    }
    store = config["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert config["extensions"]["jaeger_query"]["storage"] == {"traces": store}
    backends = config["extensions"]["jaeger_storage"]["backends"]
    assert backends == {store: {"memory": {"max_traces": jaeger.MAX_TRACES}}}
    assert set(service["extensions"]) == set(config["extensions"])
    assert set(config["processors"]) == {"batch"}


def test_jaegers_ports_follow_their_settings(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAEGER_UI_PORT", "26686")
    monkeypatch.setenv("JAEGER_OTLP_PORT", "24318")
    moved = load_stack_settings()
    config = yaml.safe_load(jaeger.config(moved))
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "127.0.0.1:24318"
    assert config["extensions"]["jaeger_query"]["http"]["endpoint"] == "127.0.0.1:26686"
    assert jaeger.daemon(moved).ports == (26686, 24318)
    assert jaeger.service_env(moved)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:24318"


def test_traced_services_send_every_trace_to_jaeger_whatever_the_caller_set(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    traces = jaeger.service_env(settings)
    assert traces == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    }
    for name in devstack.SERVICES:
        traced = services._prepare(name, settings, traces).env
        assert {k: traced[k] for k in TRACING} == traces, name
        untraced = services._prepare(name, settings, {}).env  # the caller's, as before
        assert untraced["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://elsewhere:4318", name
        others = {k: v for k, v in traced.items() if k not in TRACING}
        assert others == {k: v for k, v in untraced.items() if k not in TRACING}, name


def test_switching_tracing_on_or_off_restarts_a_running_service(settings: StackSettings) -> None:
    """The fingerprint that `services.start` compares with the running service's."""
    for name in devstack.SERVICES:
        untraced = services.fingerprint(name, settings)
        assert services.fingerprint(name, settings, {}) == untraced
        assert services.fingerprint(name, settings, jaeger.service_env(settings)) != untraced


def test_up_with_tracing_starts_jaeger_before_the_services(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[str, object]] = []
    monkeypatch.setattr(jaeger, "start", lambda _settings: started.append(("jaeger", None)))

    def service(name: str, _settings: StackSettings, *, tracing: object = None) -> None:
        started.append((name, tracing))

    monkeypatch.setattr(services, "start", service)
    devstack.start_services(settings, tracing=True)
    traces = jaeger.service_env(settings)
    assert started == [("jaeger", None), ("products", traces), ("orders", traces)]
    started.clear()
    devstack.start_services(settings)
    assert started == [("products", None), ("orders", None)]


def test_down_stops_jaeger_before_the_services(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[str] = []

    def stopper(name: str) -> Callable[[StackSettings], None]:
        return lambda _settings: stopped.append(name)

    for name in (*devstack.SERVERS, *devstack.TOOLS):
        monkeypatch.setitem(devstack._STOP, name, stopper(name))
    monkeypatch.setattr(services, "stop", lambda name, _settings: stopped.append(name))
    monkeypatch.setattr(devstack.rabbitmq, "stop_stray_epmd", lambda: None)
    devstack.down(settings)
    assert "jaeger" in devstack.TOOLS
    assert stopped.index("jaeger") < stopped.index("products")
    assert stopped[-3:] == ["kafka", "rabbitmq", "mariadb"]


def test_the_cluster_processes_are_traced_only_with_tracing(
    settings: StackSettings, tmp_path: Path
) -> None:
    plain = layout.processes(settings, tmp_path)
    traced = layout.processes(settings, tmp_path, tracing=True)
    assert [p.name for p in traced] == [p.name for p in plain]
    for untraced, process in zip(plain, traced, strict=True):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in untraced.env, untraced.name  # the switch
        assert process.env == untraced.env | jaeger.service_env(settings), process.name


@pytest.mark.parametrize(
    "argv",
    [["up", "--tracing"], ["up", "--no-services", "--tracing"], ["cluster", "up", "--tracing"]],
)
def test_the_cli_takes_tracing(argv: list[str]) -> None:
    assert cli._parser().parse_args(argv).tracing is True
    assert cli._parser().parse_args(argv[:-1]).tracing is False
    assert "jaeger" in cli._parser().parse_args(["start", "jaeger"]).name
