"""The soak's report: one self-contained HTML page (`bench.soak`): the timeline of throughput,
p99 and failures with each fault marked, the growth plots, the faults' recoveries, the audit
and the bounds."""

from __future__ import annotations

import html
import itertools
import json
from typing import Any

import matplotlib.pyplot as plt

from bench.report import png, table


def _faults(ax: Any, faults: list[dict[str, Any]]) -> None:
    for fault in faults:
        ax.axvspan(fault["at"], fault["back"], color="#d62728", alpha=0.12, linewidth=0)
        ax.text(
            fault["at"],
            0.98,
            fault["fault"],
            rotation=90,
            fontsize=6,
            va="top",
            transform=ax.get_xaxis_transform(),
        )


def _rates(progress: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Orders ended a second, from one progress line to the next."""
    return [
        (b["t"], (b["done"] - a["done"]) / max(b["t"] - a["t"], 0.1))
        for a, b in itertools.pairwise(progress)
    ]


Line = list[tuple[float, float]]
X_LABEL = "seconds since the load began"


def _plot(ax: Any, lines: dict[str, Line], title: str, unit: str, **axis: Any) -> None:
    """Each line (label: its points) on `ax`, with its title, unit, grid and legend."""
    for label, points in lines.items():
        ax.plot([t for t, _ in points], [v for _, v in points], linewidth=0.8, label=label)
    ax.set(title=title, ylabel=unit, **axis)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7, ncol=5)


def _timeline(result: dict[str, Any]) -> str:
    progress, faults = result["progress"], result["faults"]
    fig, axes = plt.subplots(3, 1, figsize=(13, 9), sharex=True)

    def over_time(field: str) -> Line:
        return [(p["t"], p[field]) for p in progress]

    _plot(axes[0], {"ended": _rates(progress)}, "Orders ended a second (accepted, out of stock)",
          "orders/s")  # fmt: skip
    _plot(axes[1], {"p99": over_time("p99_ms")}, "p99 of the second's answered attempts", "ms",
          yscale="log")  # fmt: skip
    failed = {
        "failed (5xx, cut, timed out)": over_time("window_failed"),
        "429": over_time("window_limited"),
    }
    _plot(axes[2], failed, "Attempts that failed a second (each retried)", "attempts",
          xlabel=X_LABEL)  # fmt: skip
    for ax in axes:
        _faults(ax, faults)
    return png(fig)


def _by_kind(samples: list[dict[str, Any]], field: str) -> dict[str, Line]:
    """A line per kind of process of a sampled field (memory_mb, fds, sockets)."""
    kinds = sorted({k for s in samples for k in (s.get(field) or {})})
    return {
        kind: [(s["t"], s[field][kind]) for s in samples if s.get(field) and kind in s[field]]
        for kind in kinds
    }


def _growth(result: dict[str, Any]) -> str:
    samples, faults = result["samples"], result["faults"]
    fig, axes = plt.subplots(5, 1, figsize=(13, 16), sharex=True)
    _plot(axes[0], _by_kind(samples, "memory_mb"), "Resident memory by kind of process", "MB")
    _plot(axes[1], _by_kind(samples, "fds"), "Open file descriptors by kind of process", "fds")
    _plot(axes[2], _by_kind(samples, "sockets"), "Open sockets by kind of process", "sockets")
    counted = [s for s in samples if s.get("rows")]
    tables = {
        name: [(s["t"], s["rows"][name]) for s in counted]
        for name in ("order_outbox", "product_outbox", "order_keys", "order_aliases", "unsent")
    }
    _plot(axes[3], tables, "Rows in the purged tables (and outbox rows not yet sent)", "rows")
    waiting = {
        "Kafka consumer lag": [(s["t"], s["lag"]) for s in samples],
        "RabbitMQ queue depth": [(s["t"], s["depth"]) for s in samples],
    }
    _plot(axes[4], waiting, "Commands waiting for a consumer", "messages", xlabel=X_LABEL)
    for ax in axes:
        _faults(ax, faults)
        ax.axvline(result["load_seconds"], color="#555555", linewidth=0.8)
    return png(fig)


def render(result: dict[str, Any]) -> str:
    found = result["audit"]
    audit_rows = [
        {"what": k, "value": json.dumps(v) if isinstance(v, dict | list) else v}
        for k, v in found.items()
        if k not in ("lost_orders", "orders_without_event_sample", "product_versions")
    ]
    fault_rows = [
        {
            "#": f["number"],
            "fault": f["fault"],
            "at s": f["at"],
            "back s": f["back"],
            "recovered after s": f.get("recovered_after_s"),
            "failed attempts": f.get("failed_attempts"),
            "done": f.get("did") or f.get("error"),
        }
        for f in result["faults"]
    ]
    verdict_rows = [
        {"check": v["check"], "measured": v["measured"], "": "held" if v["held"] else "FAILED"}
        for v in result["verdicts"]
    ]
    plan = result["plan"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Soak {html.escape(result["started"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}}</style></head><body>
<h1>Soak {html.escape(result["started"])}</h1>
<p>On {"the cluster" if plan.get("cluster") else "the single-node stack"}: {plan["orders"]:,}
orders from {plan["customers"]:,} customers ({plan["clients"]} at a time),
sync, Kafka and RabbitMQ in turn, plus GET /products; a fault every {plan["fault_every"]:g} s
(a killed part down {plan["down"]:g} s, a paused broker {plan["pause"]:g} s). Load
{result["load_seconds"]:g} s, drained {result["drain_seconds"]} s after it.
Services' purge horizons: {html.escape(json.dumps(result["soak_settings"]))}.</p>
<h2>Bounds</h2>{table(verdict_rows, ["check", "measured", ""])}
<h2>Timeline</h2>{_timeline(result)}
<h2>Faults</h2>{table(fault_rows, list(fault_rows[0]) if fault_rows else ["#"])}
<h2>Growth</h2>{_growth(result)}
<h2>Audit</h2>{table(audit_rows, ["what", "value"])}
</body></html>
"""
