"""Prometheus for the local stack (`make up PROMETHEUS=1`) or the cluster (`make cluster
PROMETHEUS=1`): Debian's, from tools/install-prometheus, scraping every service process's
/metrics every 5 s and evaluating deploy/prometheus/rules.yml; its UI and API on
127.0.0.1:PROMETHEUS_PORT (9090). Data, configuration and log live in the layout's
`prometheus` directory; see docs/observability.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .common import (
    HOST,
    Daemon,
    Launch,
    StackError,
    answers,
    describe,
    ensure_started,
    ensure_stopped,
    repo_root,
    stack_dir,
)
from .settings import StackSettings

READY_TIMEOUT = 60.0


# Scrape jobs: the job name (the one rules.yml's alerts name) and the ports of its processes.
Jobs = dict[str, list[int]]


def stack_jobs(settings: StackSettings) -> Jobs:
    """`make up`'s: one port per service (its workers answer /metrics together)."""
    return {
        "shop-products": [settings.http.product_port],
        "shop-orders": [settings.http.order_port],
    }


def daemon(settings: StackSettings, directory: Path | None = None) -> Daemon:
    directory = directory or stack_dir() / "prometheus"
    log = directory / "prometheus.log"
    return Daemon(
        name="prometheus",
        ports=(settings.prometheus.port,),
        directory=directory,
        log=log,
        console=log,
        ready_timeout=READY_TIMEOUT,
    )


def binaries() -> Path:
    """The directory holding prometheus and promtool (fetched once from Debian's package)."""
    script = repo_root() / "tools" / "install-prometheus"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"tools/install-prometheus failed:\n{done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


def config(jobs: Jobs) -> str:
    """The scrape configuration: one job per service (the jobs rules.yml names)."""
    rules = repo_root() / "deploy" / "prometheus" / "rules.yml"
    scrapes = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: "
        f"[{', '.join(repr(f'{HOST}:{port}') for port in ports)}]\n"
        for job, ports in jobs.items()
    )
    return (
        "# Written by devstack (tools/devstack/src/devstack/prometheus.py) at each start.\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        f"rule_files:\n  - {rules}\n"
        f"scrape_configs:\n{scrapes}"
    )


def ready(settings: StackSettings) -> bool:
    return answers(f"http://{HOST}:{settings.prometheus.port}/-/ready")


def _prepare(server: Daemon, jobs: Jobs) -> Launch:
    data = server.directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    config_file = server.directory / "prometheus.yml"
    config_file.write_text(config(jobs))
    argv = [
        str(binaries() / "prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address={HOST}:{server.port}",
        "--web.enable-lifecycle",  # POST /-/reload re-reads the rules
    ]
    return Launch(argv=argv, env={"PATH": "/usr/bin:/bin"}, cwd=server.directory)


def start(
    settings: StackSettings, *, jobs: Jobs | None = None, directory: Path | None = None
) -> None:
    """Start it unless it runs: scraping `jobs` (`make up`'s by default), its files in
    `directory` (`<stack>/prometheus` by default)."""
    server = daemon(settings, directory)
    ensure_started(
        server,
        prepare=lambda: _prepare(server, jobs or stack_jobs(settings)),
        ready=lambda: ready(settings),
    )


def stop(settings: StackSettings, directory: Path | None = None) -> None:
    ensure_stopped(daemon(settings, directory))


def status(settings: StackSettings, directory: Path | None = None) -> str:
    return describe(daemon(settings, directory), lambda: ready(settings))
