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


def _timeline(result: dict[str, Any]) -> str:
    progress, faults = result["progress"], result["faults"]
    fig, axes = plt.subplots(3, 1, figsize=(13, 9), sharex=True)
    rates = _rates(progress)
    axes[0].plot([t for t, _ in rates], [r for _, r in rates], linewidth=0.7, color="#1f77b4")
    axes[0].set(title="Orders ended a second (accepted, out of stock)", ylabel="orders/s")
    axes[1].plot(
        [p["t"] for p in progress], [p["p99_ms"] for p in progress], linewidth=0.7, color="#9467bd"
    )
    axes[1].set(title="p99 of the second's answered attempts", ylabel="ms", yscale="log")
    axes[2].plot(
        [p["t"] for p in progress],
        [p["window_failed"] for p in progress],
        linewidth=0.7,
        color="#d62728",
        label="failed (5xx, cut, timed out)",
    )
    axes[2].plot(
        [p["t"] for p in progress],
        [p["window_limited"] for p in progress],
        linewidth=0.7,
        color="#ff7f0e",
        label="429",
    )
    axes[2].set(
        title="Attempts that failed a second (each retried)",
        ylabel="attempts",
        xlabel="seconds since the load began",
    )
    axes[2].legend(fontsize=8)
    for ax in axes:
        _faults(ax, faults)
        ax.grid(alpha=0.3)
    return png(fig)


def _series(ax: Any, samples: list[dict[str, Any]], field: str, title: str, unit: str) -> None:
    kinds = sorted({k for s in samples for k in (s.get(field) or {})})
    for kind in kinds:
        points = [(s["t"], s[field][kind]) for s in samples if s.get(field) and kind in s[field]]
        ax.plot([t for t, _ in points], [v for _, v in points], linewidth=0.8, label=kind)
    ax.set(title=title, ylabel=unit)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)


def _growth(result: dict[str, Any]) -> str:
    samples, faults = result["samples"], result["faults"]
    fig, axes = plt.subplots(5, 1, figsize=(13, 16), sharex=True)
    _series(axes[0], samples, "memory_mb", "Resident memory by kind of process", "MB")
    _series(axes[1], samples, "fds", "Open file descriptors by kind of process", "fds")
    _series(axes[2], samples, "sockets", "Open sockets by kind of process", "sockets")
    tables = [
        {**{k: v for k, v in s["rows"].items() if k not in ("stored",)}, "t": s["t"]}
        for s in samples
        if s.get("rows")
    ]
    for name in ("order_outbox", "product_outbox", "order_keys", "order_aliases", "unsent"):
        axes[3].plot([r["t"] for r in tables], [r[name] for r in tables], linewidth=0.8, label=name)
    axes[3].set(title="Rows in the purged tables (and outbox rows not yet sent)", ylabel="rows")
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7, ncol=5)
    axes[4].plot(
        [s["t"] for s in samples],
        [s["lag"] for s in samples],
        linewidth=0.8,
        label="Kafka consumer lag",
    )
    axes[4].plot(
        [s["t"] for s in samples],
        [s["depth"] for s in samples],
        linewidth=0.8,
        label="RabbitMQ queue depth",
    )
    axes[4].set(
        title="Commands waiting for a consumer",
        ylabel="messages",
        xlabel="seconds since the load began",
    )
    axes[4].grid(alpha=0.3)
    axes[4].legend(fontsize=7)
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
<p>{plan["orders"]:,} orders from {plan["customers"]:,} customers ({plan["clients"]} at a time),
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
