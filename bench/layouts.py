"""`make bench CLUSTER=1`: the same bench on the single-node stack and on the cluster, side by side.

1. `bench.run` against `make up`'s system (one MariaDB, Kafka and RabbitMQ node, one process per
   service with WORKERS workers);
2. `devstack cluster up` (three nodes per engine behind HAProxy, two one-worker replicas per
   service, four consumer processes; its HTTP fronts on 18080/18081 when `make up`'s services
   hold 8080/8081), then `bench.run` against it with the settings `devstack cluster env` gives;
   the cluster is stopped again if this run started it;
3. one page, bench/results/<time>-layouts/report.html: per path the best rate and the p99 of both
   layouts with their ratio, the drain and raw limits, and both audits; each layout's own full
   report beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.report import LABELS, at_rate, best, summary_lines
from shop.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DEVSTACK = ROOT / ".venv" / "bin" / "devstack"
CLUSTER_FRONTS = {"PRODUCT_SERVICE_PORT": "18080", "ORDER_SERVICE_PORT": "18081"}


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _bench(out: Path, layout: str, quick: bool, env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.run", "--out", str(out), "--layout", layout]
    subprocess.run([*argv, *(["--quick"] if quick else [])], cwd=ROOT, env=env, check=False)
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def _cluster_env(base: dict[str, str]) -> dict[str, str]:
    """The environment pointing settings at the cluster (`devstack cluster env`'s exports)."""
    lines = subprocess.run(
        [str(DEVSTACK), "cluster", "env"], cwd=ROOT, env=base, check=True, capture_output=True,
        text=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    env = dict(base)
    for line in lines:
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def _cluster_running(env: dict[str, str]) -> bool:
    states = subprocess.run(
        [str(DEVSTACK), "cluster", "status"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    ).stdout  # fmt: skip
    return "running" in states


def _row(name: str, single: float, cluster: float, unit: str) -> dict[str, str]:
    ratio = f"{cluster / single:.2f}x" if single else "-"
    return {
        "what": name,
        "single node": f"{single:,.1f} {unit}",
        "cluster": f"{cluster:,.1f} {unit}",
        "cluster / single": ratio,
    }


def _p99_at(runs: list[dict[str, Any]], rate: float) -> float:
    found = at_rate(runs, rate)
    return float(found["p99_ms"]) if found else float("nan")


def rows(single: dict[str, Any], cluster: dict[str, Any]) -> list[dict[str, str]]:
    out = [
        _row(
            f"{LABELS[name]}: best rate (closed loop)",
            best(single["sweep"][name]),
            best(cluster["sweep"][name]),
            "/s",
        )
        for name in single["sweep"]
    ]
    for name in single["open_loop"]:
        rate = min(r["rate"] for r in single["open_loop"][name])
        out.append(
            _row(
                f"{LABELS[name]}: p99 at {rate:g}/s offered",
                _p99_at(single["open_loop"][name], rate),
                _p99_at(cluster["open_loop"][name], rate),
                "ms",
            )
        )
    for channel in single["drain"]:
        out.append(
            _row(
                f"{channel} consumer drain",
                single["drain"][channel]["per_second"],
                cluster["drain"][channel]["per_second"],
                "/s",
            )
        )
    for limit, values in single["limits"].items():
        out.append(
            _row(
                f"raw {limit.replace('_', ' ')}",
                values["per_second"],
                cluster["limits"][limit]["per_second"],
                "/s",
            )
        )
    idle_single = single["idle_latency"]["channels"]["kafka"].get("p99", float("nan"))
    idle_cluster = cluster["idle_latency"]["channels"]["kafka"].get("p99", float("nan"))
    out.append(_row("Kafka order at idle, 202 -> stored, p99", idle_single, idle_cluster, "ms"))
    return out


def _audit(results: dict[str, Any]) -> str:
    a = results["audit"]
    return f"lost {a['lost']}, duplicated {a['duplicated']}, oversold {a['oversold']}"


def render(single: dict[str, Any], cluster: dict[str, Any], table: list[dict[str, str]]) -> str:
    columns = list(table[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(row[c])}</td>" for c in columns) + "</tr>"
        for row in table
    )
    verdicts = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(chr(10).join(summary_lines(r)))}</pre>"
        for name, r in (("single node", single), ("cluster", cluster))
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Both layouts</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>The same bench on both layouts</h1>
<p>Single node: one MariaDB, Kafka and RabbitMQ node, each service one process of
{single["machine"]["service_workers"]} workers. Cluster: three Galera nodes (writes through
one) and HAProxy, three KRaft nodes (RF 3, min ISR 2, acks=all), three RabbitMQ nodes (quorum
queues), two one-worker replicas per service behind HAProxy, four consumer processes; all on
the same {single["machine"]["cores"]} cores.{" Quick runs." if single["quick"] else ""}</p>
<p>Audit, single node: {_audit(single)}. Audit, cluster: {_audit(cluster)}.</p>
<table><tr>{head}</tr>{body}</table>
<p>Full reports: <a href="single/report.html">single node</a>,
<a href="cluster/report.html">cluster</a>.</p>
{verdicts}
</body></html>
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick bench on each layout")
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"{stamp}-layouts"
    env = dict(os.environ)
    say("layout 1 of 2: the single-node stack (make up)")
    single = _bench(out / "single", "single", args.quick, env)
    settings = load_settings()
    base = dict(env)
    if str(settings.http.product_port) == "8080":  # make up's services hold the defaults
        base |= CLUSTER_FRONTS
    started = not _cluster_running(base)
    say("layout 2 of 2: the cluster (devstack cluster up)")
    subprocess.run([str(DEVSTACK), "cluster", "up"], cwd=ROOT, env=base, check=True)
    try:
        cluster = _bench(out / "cluster", "cluster", args.quick, _cluster_env(base))
    finally:
        if started:
            subprocess.run([str(DEVSTACK), "cluster", "down"], cwd=ROOT, env=base, check=False)
    table = rows(single, cluster)
    (out / "results.json").write_text(
        json.dumps({"single": single, "cluster": cluster, "table": table}, indent=2, default=str)
    )
    (out / "report.html").write_text(render(single, cluster, table))
    for row in table:
        say(f"{row['what']}: {row['single node']} | {row['cluster']} | {row['cluster / single']}")
    say(f"audit, single node: {_audit(single)}; cluster: {_audit(cluster)}")
    say(f"report: {out / 'report.html'}")
    return 0 if single["audit"]["ok"] and cluster["audit"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
