"""deploy/prometheus's rules and deploy/grafana's dashboard name only what exists: every
series an expression reads is a metric the services define or a recording rule of rules.yml.
(`make rules-test` runs promtool's own check and the rules' unit tests.)"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from devstack import cluster, layout, prometheus
from devstack.settings import load_stack_settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "shop-dashboard.json"
# The modules that define the services' metrics.
MODULES = (
    "shop.web.middleware",
    "shop.orders.service",
    "shop.orders.consumer",
    "shop.storage.outbox",
    "shop.storage.database",
    "shop.access.rate_limit",
    "shop.messaging.kafka",
    "shop.messaging.rabbitmq",
)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
SCRAPED = {"up"}  # what Prometheus itself records per target


def _exposed() -> set[str]:
    """The series names the services' metrics expose."""
    for module in MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def series_read(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords, label names and
    values, durations and numbers left out)."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings (label values, formats)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    tokens = re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", text)
    return {t.group(0) for t in tokens if t.group(1) is None and t.group(0).lower() not in KEYWORDS}


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_parser_finds_series_and_only_series() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (service, route, le) "
        '(rate(http_request_duration_seconds_bucket{route=~"/orders.*"}[5m]))) > 0.25 '
        "and delta(shop:order_queue_depth:max[5m]) > 0"
    )
    wanted = {"http_request_duration_seconds_bucket", "shop:order_queue_depth:max"}
    assert series_read(expr) == wanted


def test_every_rule_reads_only_metrics_the_services_expose_or_recorded_series() -> None:
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    known = _exposed() | recorded | SCRAPED
    for rule in rules:
        unknown = series_read(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads {unknown}"
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {"ShopOutboxStuck", "ShopConsumerFallingBehind", "ShopDeadLetters"} <= alerts


def test_every_dashboard_panel_reads_only_metrics_the_services_expose_or_recorded_series() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = _exposed() | recorded
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert panels
    for panel in panels:
        for target in panel["targets"]:
            unknown = series_read(target["expr"]) - known
            assert not unknown, f"panel {panel['title']!r} reads {unknown}"


def _targets(jobs: prometheus.Jobs) -> dict[str, list[str]]:
    config = yaml.safe_load(prometheus.config(jobs))
    assert config["rule_files"] == [str(RULES)]
    scrapes = config["scrape_configs"]
    return {job["job_name"]: job["static_configs"][0]["targets"] for job in scrapes}


def test_the_stack_prometheus_scrapes_both_services_under_the_rules_job_names(
    tmp_path: Path,
) -> None:
    settings = load_stack_settings(product_service_port=18080, order_service_port=18081)
    assert _targets(prometheus.stack_jobs(settings)) == {
        "shop-products": ["127.0.0.1:18080"],
        "shop-orders": ["127.0.0.1:18081"],
    }
    # the cluster's: every replica and consumer process answers its own /metrics
    processes = layout.processes(settings, tmp_path)
    targets = _targets(cluster.prometheus_jobs(settings, tmp_path))
    assert sorted(targets["shop-products"] + targets["shop-orders"]) == sorted(
        f"127.0.0.1:{p.port}" for p in processes
    )
    assert all(
        f"127.0.0.1:{p.port}" in targets["shop-products" if "products" in p.name else "shop-orders"]
        for p in processes
    )
