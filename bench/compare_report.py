"""The side-by-side comparison as one self-contained HTML page: a plot and the tables.

Per path, the throughput of both sides at each connection count (medians over rounds) with
the head/base speed-up written above each pair; and, when the base is `0fc452c`, the speed-up
the original Go design showed over it (issue 9's bar) as a marker to pass.
"""

from __future__ import annotations

import html
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import png

# The original Go design's throughput over 0fc452c's, measured side by side (issue 9).
GOALS_OVER_0FC452C = {
    "sync": {50: 4.0, 200: 2.7, 800: 3.5},
    "kafka": {50: 1.0, 200: 2.6, 800: 2.8},
    "rabbitmq": {50: 3.1, 200: 3.7, 800: 3.4},
    "products": {50: 1.8, 200: 2.1, 800: 2.1},
}
# Issue 19's speed-ups over 17e278c (about 10 % ahead of the original Go design on sync orders;
# every other path at least 0.95x).
_KEEP = {50: 0.95, 200: 0.95, 800: 0.95}
_SYNC_GOAL = {50: 3.0, 200: 1.6, 800: 1.4}
GOALS_OVER_17E278C = {
    "sync": _SYNC_GOAL,
    "hot": _SYNC_GOAL,
    "kafka": _KEEP,
    "rabbitmq": _KEEP,
    "products": _KEEP,
}
BASE_COLOUR, HEAD_COLOUR, GOAL_COLOUR = "#9e9e9e", "#1f77b4", "#d62728"


def goals_for(base_sha: str) -> dict[str, dict[int, float]]:
    """Issue 9's or issue 19's speed-up goals, if the base is the commit they are stated
    against."""
    if base_sha.startswith("0fc452c"):
        return GOALS_OVER_0FC452C
    if base_sha.startswith("17e278c"):
        return GOALS_OVER_17E278C
    return {}


def plot(rows: list[dict[str, Any]], labels: dict[str, str], goals: dict[str, Any]) -> str:
    paths = list(dict.fromkeys(row["path"] for row in rows))
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 4.2), squeeze=False)
    for ax, path in zip(axes[0], paths, strict=True):
        steps = [row for row in rows if row["path"] == path]
        xs = range(len(steps))
        width = 0.38
        base = [row["base_rps"] for row in steps]
        head = [row["head_rps"] for row in steps]
        ax.bar([x - width / 2 for x in xs], base, width, color=BASE_COLOUR, label="base")
        ax.bar([x + width / 2 for x in xs], head, width, color=HEAD_COLOUR, label="head")
        for x, row in zip(xs, steps, strict=True):
            goal = goals.get(path, {}).get(row["connections"])
            if goal is not None:
                ax.hlines(
                    row["base_rps"] * goal,
                    x + 0.02,
                    x + width + 0.02,
                    colors=GOAL_COLOUR,
                    linewidth=2,
                    label="goal" if x == 0 else None,
                )
            if row["ratio"] is not None:
                ax.annotate(
                    f"{row['ratio']:.2f}x",
                    (x + width / 2, row["head_rps"]),
                    ha="center",
                    va="bottom",
                    fontsize=9,
                )
        ax.set_xticks(list(xs), [str(row["connections"]) for row in steps])
        ax.set_xlabel("connections")
        ax.set_title(labels[path], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("2xx answers per second (median)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return png(fig)


def page(
    rows: list[dict[str, Any]], header: dict[str, Any], labels: dict[str, str], tables_md: str
) -> str:
    goals = goals_for(header["base"])
    note = (
        "The red marks are the speed-ups the head's bars must reach over this base "
        "(issue 9: the original Go design's over 0fc452c; issue 19: its goals over 17e278c)."
        if goals
        else ""
    )
    title = f"base {header['base'][:12]} against head {header['head']}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{header["rounds"]} round(s) of {header["seconds"]:g} s per step and side; the numbers above
the bars are head/base, the median of the per-round ratios. {html.escape(note)}</p>
{plot(rows, labels, goals)}
<pre>{html.escape(tables_md)}</pre>
</body></html>
"""
