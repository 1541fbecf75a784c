"""Jaeger for the local stack (`make up TRACING=1`) or the cluster (`make cluster TRACING=1`):
`cmd/jaeger` built once by tools/install-jaeger, keeping traces in memory, taking OTLP/HTTP on
127.0.0.1:JAEGER_OTLP_PORT (4318) and serving its query API and our trace viewer
(tools/trace-viewer, in place of jaeger-ui, which a build from the Go module lacks) on
127.0.0.1:JAEGER_UI_PORT (16686). The services started with tracing send their spans there
(`service_env`). Configuration and log live in the layout's `jaeger` directory; see
docs/observability.md."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .common import (
    HOST,
    Daemon,
    Launch,
    StackError,
    answers,
    describe,
    ensure_started,
    ensure_stopped,
    port_open,
    repo_root,
    stack_dir,
)
from .settings import StackSettings

READY_TIMEOUT = 60.0
MAX_TRACES = 100_000  # the in-memory store's bound: the oldest traces go first
SAMPLING_RATIO = "1.0"  # every trace, on a development stack


def daemon(settings: StackSettings, directory: Path | None = None) -> Daemon:
    directory = directory or stack_dir() / "jaeger"
    log = directory / "jaeger.log"
    return Daemon(
        name="jaeger",
        ports=(settings.jaeger.ui_port, settings.jaeger.otlp_port),
        directory=directory,
        log=log,
        console=log,
        ready_timeout=READY_TIMEOUT,
    )


def binary() -> Path:
    """The jaeger binary, built the first time (many minutes; the build's progress goes to
    stderr)."""
    script = repo_root() / "tools" / "install-jaeger"
    done = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"tools/install-jaeger failed (exit {done.returncode}); see above")
    return Path(done.stdout.strip().splitlines()[-1])


def viewer() -> Path:
    """The trace viewer's directory: Jaeger serves its index.html at / (and at every path that is
    no API route), read once when Jaeger starts."""
    return repo_root() / "tools" / "trace-viewer"


def otlp_endpoint(settings: StackSettings) -> str:
    """The OTLP/HTTP base URL the services post to (they add /v1/traces)."""
    return f"http://{HOST}:{settings.jaeger.otlp_port}"


def service_env(settings: StackSettings) -> dict[str, str]:
    """What a service process needs in its environment to send every trace to this Jaeger."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint(settings),
        "OTEL_TRACES_SAMPLER_ARG": SAMPLING_RATIO,
    }


def config(settings: StackSettings) -> str:
    """Jaeger v2's configuration (an OpenTelemetry Collector's): OTLP/HTTP in, the in-memory
    store, the query API; every listener on 127.0.0.1. Nothing else of the all-in-one default
    (OTLP/gRPC, Jaeger and Zipkin receivers, remote sampling, health check, expvar, zpages, the
    collector's own metrics on 8888), whose ports would only be in the way. The query service
    serves the trace viewer (`viewer()`) where its UI would be."""
    store = "memory"
    tree: dict[str, Any] = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {store: {"memory": {"max_traces": MAX_TRACES}}}},
            "jaeger_query": {
                "storage": {"traces": store},
                "enable_tracing": False,  # no traces of Jaeger itself among the shop's
                "http": {"endpoint": f"{HOST}:{settings.jaeger.ui_port}"},
                # The query API over gRPC is unused here: a port the kernel picks, so it takes
                # none that something else may want.
                "grpc": {"endpoint": f"{HOST}:0"},
                # The UI's assets from this directory instead of the binary's (a placeholder
                # page in a build from the Go module).
                "ui": {"assets_path": str(viewer())},
            },
        },
        "receivers": {
            "otlp": {"protocols": {"http": {"endpoint": f"{HOST}:{settings.jaeger.otlp_port}"}}}
        },
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": store}},
    }
    return "# Written by devstack (tools/devstack/src/devstack/jaeger.py) at each start.\n" + (
        yaml.safe_dump(tree, sort_keys=False)
    )


def ready(settings: StackSettings) -> bool:
    """The query API answers and the OTLP receiver listens (the collector starts its
    receivers after its extensions)."""
    return answers(f"http://{HOST}:{settings.jaeger.ui_port}/api/services") and port_open(
        settings.jaeger.otlp_port
    )


def _prepare(server: Daemon, settings: StackSettings, program: Path) -> Launch:
    page = viewer() / "index.html"
    if not page.is_file():  # Jaeger would stop at start with a panic about it
        raise StackError(f"{page} is missing: the trace viewer Jaeger serves")
    config_file = server.directory / "jaeger.yaml"
    config_file.write_text(config(settings))
    return Launch(
        argv=[str(program), f"--config={config_file}"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=server.directory,
    )


def start(settings: StackSettings, *, directory: Path | None = None) -> None:
    """Start it unless it runs, its files in `directory` (`<stack>/jaeger` by default)."""
    server = daemon(settings, directory)
    program = binary()  # the first build takes long: outside the start's readiness timeout
    ensure_started(
        server,
        prepare=lambda: _prepare(server, settings, program),
        ready=lambda: ready(settings),
    )


def stop(settings: StackSettings, directory: Path | None = None) -> None:
    ensure_stopped(daemon(settings, directory))


def status(settings: StackSettings, directory: Path | None = None) -> str:
    return describe(daemon(settings, directory), lambda: ready(settings))
