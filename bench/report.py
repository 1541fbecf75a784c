"""The benchmark report: one self-contained HTML page with plots (PNG, inline) and tables."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadgen import LoadResult

COLOURS = {
    "floor": "#888888",
    "sync": "#1f77b4",
    "sync_hot": "#9467bd",
    "kafka": "#d62728",
    "rabbitmq": "#ff7f0e",
    "products": "#2ca02c",
}
LABELS = {
    "floor": "HTTP floor (no I/O)",
    "sync": "sync, many products",
    "sync_hot": "sync, one hot product",
    "kafka": "async via Kafka",
    "rabbitmq": "async via RabbitMQ",
    "products": "GET /products (100)",
}


def png(fig: Any) -> str:
    """A figure as an inline PNG <img> (closed afterwards), for the reports."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def best(runs: list[dict[str, Any]]) -> float:
    return max((r["rps"] for r in runs if r["requests"] and not _failed(r)), default=0.0)


def _failed(run: dict[str, Any]) -> int:
    return LoadResult(**run).failed


def at_rate(runs: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((r for r in runs if r["rate"] == rate), None)


def _p99_check(run: dict[str, Any] | None, limit_ms: float) -> tuple[str, bool]:
    if run is None:
        return "not run", False
    return f"{run['p99_ms']:.1f} ms", run["p99_ms"] <= limit_ms and _failed(run) == 0


def sustained(runs: list[dict[str, Any]], p99_ms: float = 50.0) -> float:
    """The highest offered rate served in full, error-free, with p99 under `p99_ms`."""
    good = [
        r["rate"]
        for r in runs
        if _failed(r) == 0 and r["p99_ms"] <= p99_ms and r["rps"] >= 0.95 * r["rate"]
    ]
    return max(good, default=0.0)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the performance issue, measured, with its verdict."""
    floor = best(results["floor"])
    sweep, loop = results["sweep"], results["open_loop"]
    inserts = results["limits"]["batched_inserts"]["per_second"]
    rows = []
    idle = results.get("idle_latency")  # absent from results written before it was measured
    if idle is not None:
        kafka = idle["channels"]["kafka"]
        rows.append(
            {
                "target": f"{idle['target']['name']} ({kafka['orders']} single orders)",
                "measured": (
                    f"p99 {kafka.get('p99', '-')} ms (p50 {kafka.get('p50', '-')} ms); "
                    f"stored {kafka['stored']} of {kafka['orders']}"
                ),
                "ok": idle["target"]["met"],
            }
        )
    for channel in ("kafka", "rabbitmq"):
        top = best(sweep[channel])
        at2000 = at_rate(loop[channel], 2000)
        rows += [
            {
                "target": f"{channel} intake >= 60% of the HTTP floor",
                "measured": f"{top:.0f}/s = {top / floor:.0%} of {floor:.0f}/s" if floor else "-",
                "ok": floor > 0 and top >= 0.6 * floor,
            },
            {
                "target": f"{channel} intake >= 2,500 accepted/s",
                "measured": f"{top:.0f}/s",
                "ok": top >= 2500,
            },
            {
                "target": f"{channel} p99 <= 25 ms at 2,000/s",
                "measured": _p99_check(at2000, 25)[0],
                "ok": _p99_check(at2000, 25)[1],
            },
        ]
    for channel, drained in results["drain"].items():
        rate = drained["per_second"]
        rows += [
            {
                "target": f"{channel} consumer drain >= 50% of raw batched inserts",
                "measured": f"{rate}/s = {rate / inserts:.0%} of {inserts}/s",
                "ok": rate >= 0.5 * inserts,
            },
            {
                "target": f"{channel} consumer drain >= 5,000/s",
                "measured": f"{rate}/s",
                "ok": rate >= 5000,
            },
        ]
    sync_best, at1000 = best(sweep["sync"]), at_rate(loop["sync"], 1000)
    hot_best = best(sweep["sync_hot"])
    products_best = best(sweep["products"])
    rows += [
        {
            "target": "sync orders (many products) >= 1,200/s",
            "measured": f"{sync_best:.0f}/s",
            "ok": sync_best >= 1200,
        },
        {
            "target": "sync p99 <= 50 ms at 1,000/s",
            "measured": _p99_check(at1000, 50)[0],
            "ok": _p99_check(at1000, 50)[1],
        },
        {
            "target": "sync orders, one hot product >= 1,000/s, no oversell",
            "measured": f"{hot_best:.0f}/s, oversold {results['audit']['oversold']}",
            "ok": hot_best >= 1000 and results["audit"]["oversold"] == 0,
        },
        {
            "target": "GET /products (100 per page) >= 3,000/s",
            "measured": f"{products_best:.0f}/s",
            "ok": products_best >= 3000,
        },
    ]
    return rows


def summary_lines(results: dict[str, Any]) -> list[str]:
    return [
        f"{'met ' if row['ok'] else 'MISS'} {row['target']}: {row['measured']}"
        for row in targets(results)
    ]


def _connection_axis(ax: Any, connections: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(connections)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _sweep_plots(results: dict[str, Any]) -> str:
    series = {"floor": results["floor"], **results["sweep"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, runs in series.items():
        conns = [r["connections"] for r in runs]
        left.plot(
            conns, [r["rps"] for r in runs], marker="o", color=COLOURS[name], label=LABELS[name]
        )
        right.plot(
            conns, [r["p99_ms"] for r in runs], marker="o", color=COLOURS[name], label=LABELS[name]
        )
    left.set(title="Throughput (closed loop)", xlabel="connections", ylabel="answers / s")
    right.set(title="p99 latency (closed loop)", xlabel="connections", ylabel="ms", yscale="log")
    for ax in (left, right):
        _connection_axis(ax, [r["connections"] for r in results["floor"]])
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    return png(fig)


def _percentile_plots(results: dict[str, Any]) -> str:
    series = results["sweep"]
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3.6), sharey=True)
    for ax, (name, runs) in zip(axes, series.items(), strict=True):
        conns = [r["connections"] for r in runs]
        for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", "-."), ("p999_ms", ":")):
            ax.plot(
                conns,
                [r[key] for r in runs],
                style,
                marker=".",
                color=COLOURS[name],
                label=key.replace("_ms", "").replace("p999", "p99.9"),
            )
        ax.set(title=LABELS[name], xlabel="connections", yscale="log")
        _connection_axis(ax, conns)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency, ms")
    axes[0].legend(fontsize=8)
    return png(fig)


def _open_loop_plot(results: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, runs in results["open_loop"].items():
        ax.plot(
            [r["rate"] for r in runs],
            [max(r["p99_ms"], 0.1) for r in runs],
            marker="o",
            color=COLOURS[name],
            label=LABELS[name],
        )
    ax.axhline(50, color="black", linewidth=0.8, linestyle="--")
    ax.text(ax.get_xlim()[0], 52, " p99 = 50 ms", fontsize=8)
    ax.set(
        title="Open loop: p99 at a constant offered rate (corrected for coordinated omission)",
        xlabel="offered requests / s",
        ylabel="p99, ms",
        yscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def _depth_plot(results: dict[str, Any]) -> str:
    samples = results["depth"]["samples"]
    fig, ax = plt.subplots(figsize=(13, 3.8))
    for channel in ("kafka", "rabbitmq"):
        ax.plot(
            [s["t"] for s in samples],
            [s[channel] for s in samples],  # NaN (a missed sample) leaves a gap
            color=COLOURS[channel],
            label=f"{channel} (lag / queue depth)",
        )
    for mark in results["depth"]["marks"]:
        ax.axvline(mark["t"], color="#bbbbbb", linewidth=0.7)
        ax.text(
            mark["t"], ax.get_ylim()[1] * 0.95, mark["label"], rotation=90, fontsize=7, va="top"
        )
    ax.set(
        title="Commands waiting for a consumer, during and after the load",
        xlabel="seconds since the first load",
        ylabel="messages",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def _limits_plot(results: dict[str, Any]) -> str:
    floor = best(results["floor"])
    bars = {
        "HTTP floor": floor,
        "kafka intake": best(results["sweep"]["kafka"]),
        "rabbitmq intake": best(results["sweep"]["rabbitmq"]),
        "sync (many)": best(results["sweep"]["sync"]),
        "sync (hot)": best(results["sweep"]["sync_hot"]),
        "raw Kafka produce": results["limits"]["kafka_produce"]["per_second"],
        "raw RabbitMQ publish": results["limits"]["rabbitmq_publish"]["per_second"],
        "raw batched inserts": results["limits"]["batched_inserts"]["per_second"],
        "kafka drain": results["drain"]["kafka"]["per_second"],
        "rabbitmq drain": results["drain"]["rabbitmq"]["per_second"],
    }
    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = list(bars)
    ax.barh(names, [bars[n] for n in names], color="#4c72b0")
    for i, name in enumerate(names):
        ax.text(bars[name], i, f" {bars[name]:,.0f}/s", va="center", fontsize=8)
    ax.set(
        title="Each path against the limits measured in the same run",
        xscale="log",
        xlabel="per second (log)",
    )
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(results: dict[str, Any]) -> str:
    audit = results["audit"]
    verdict = (
        "<p class='ok'>Audit passed: no accepted order lost or duplicated, no stock oversold.</p>"
        if audit["ok"]
        else "<p class='fail'>RUN FAILED: the audit found lost, duplicated or oversold orders.</p>"
    )
    target_rows = [
        {
            "target": r["target"],
            "measured": r["measured"],
            "verdict": "met" if r["ok"] else "missed",
        }
        for r in targets(results)
    ]
    m = results["machine"]
    # Runs before shopload recorded oha's version under "oha".
    generator = m["versions"].get("load_generator") or m["versions"].get("oha", "unknown")
    customers = results.get("customers")
    customers_line = (
        f"<p>Order load: {customers['count']:,} customers in turn (users "
        f"{customers['first_user']}-{customers['first_user'] + customers['count'] - 1}), each "
        f"with their own token, each under the per-customer limit of "
        f"{customers['rate_per_second']:g} orders/s (burst {customers['burst']}); a 429 counts "
        f"as failed.</p>"
        if customers
        else ""
    )
    floor_gen = max((r["generator_cores"] for r in results["floor"]), default=0)
    floor_best = best(results["floor"])
    sweep_rows = [
        {
            "path": LABELS[name],
            "connections": r["connections"],
            "answers/s": r["rps"],
            "p50 ms": r["p50_ms"],
            "p90 ms": r["p90_ms"],
            "p99 ms": r["p99_ms"],
            "p99.9 ms": r["p999_ms"],
            "failed": _failed(r),
            "generator cores": r["generator_cores"],
        }
        for name, runs in {"floor": results["floor"], **results["sweep"]}.items()
        for r in runs
    ]
    sustained_rows = [
        {"path": LABELS[n], "highest rate with p99 <= 50 ms": sustained(runs)}
        for n, runs in results["open_loop"].items()
    ]
    latency_rows = [{"channel": ch, **v} for ch, v in results["accept_to_stored_ms"].items()]
    idle = results.get("idle_latency")
    idle_rows = [
        {
            "channel": ch,
            "orders": r["orders"],
            "stored": r["stored"],
            "p50 ms": r.get("p50", "-"),
            "p99 ms": r.get("p99", "-"),
            "max ms": r.get("max", "-"),
            "202 answered, p50 ms": r["intake_ms"].get("p50", "-"),
        }
        for ch, r in (idle["channels"].items() if idle else ())
    ]
    idle_section = (
        f"""<h2>Idle latency: single orders, 202 to stored</h2>
<p>{html.escape(idle["method"])}. Before it, the Kafka lag and RabbitMQ depth were
{html.escape(str(idle["depths_before"]))}. Target: {html.escape(idle["target"]["name"])},
<span class="{"ok" if idle["target"]["met"] else "fail"}">{
            "met" if idle["target"]["met"] else "missed"
        }</span>.</p>
{table(idle_rows, list(idle_rows[0]) if idle_rows else [])}"""
        if idle
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shop benchmark {results["started"]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
.ok {{ color: #176f2c; font-weight: bold; }} .fail {{ color: #b00020; font-weight: bold;
  font-size: 1.3em; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>shop benchmark, {results["started"]}{" (quick)" if results["quick"] else ""}</h1>
{verdict}
<p>Machine: {m["cores"]} cores, {m["memory_gib"]} GiB, {html.escape(m["platform"])}.
Servers: MariaDB {html.escape(m["versions"]["mariadb"])}, RabbitMQ
{html.escape(m["versions"]["rabbitmq"])}, Kafka {html.escape(str(m["versions"]["kafka"]))};
Python {m["versions"]["python"]}; load generator {html.escape(generator)};
{m["service_workers"]} worker process(es) per service. Everything (servers, services, load
generator) shares these cores, so every figure is best read as a ratio to the limits below,
measured in the same run.</p>
{customers_line}
<p>Load generator: at most {floor_gen} cores while driving the HTTP floor to
{floor_best:,.0f} answers/s, so it is not what limits the figures.</p>
<h2>Targets</h2>{table(target_rows, ["target", "measured", "verdict"])}
<h2>Audit</h2>{
        table(
            [
                {
                    "accepted": audit["accepted"],
                    "stored": audit["stored"],
                    "lost": audit["lost"],
                    "duplicated": audit["duplicated"],
                    "oversold": audit["oversold"],
                }
            ],
            ["accepted", "stored", "lost", "duplicated", "oversold"],
        )
    }
{idle_section}
<h2>Throughput and latency against connections</h2>{_sweep_plots(results)}
{_percentile_plots(results)}
<h2>Open loop: constant offered rates</h2>{_open_loop_plot(results)}
{table(sustained_rows, ["path", "highest rate with p99 <= 50 ms"])}
<h2>Asynchronous paths: queue depth and time to storage</h2>{_depth_plot(results)}
<p>From acceptance (the id's timestamp) to the stored row, during the load:</p>
{table(latency_rows, ["channel", "count", "p50", "p99", "max"])}
<p>Consumer drain rate with no HTTP load (one standalone consumer emptying a filled topic or
queue; from its first stored order to its last):
Kafka {results["drain"]["kafka"]["per_second"]:,}/s, RabbitMQ
{results["drain"]["rabbitmq"]["per_second"]:,}/s.</p>
<h2>Limits</h2>{_limits_plot(results)}
<h2>Every closed-loop run</h2>{table(sweep_rows, list(sweep_rows[0]) if sweep_rows else [])}
</body></html>
"""
