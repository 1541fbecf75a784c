"""CPU per request of a base commit and this checkout, at one fixed request rate (open loop).

Closed-loop throughput on a shared two-core machine moves by 10-25 % from round to round (the
load generator competes with the services for the same cores); CPU seconds per answered request
at a rate both sides sustain is far steadier. Both sides run as in `bench.compare` (own
database, topics, queue and ports, same servers); each round drives every path on both sides in
turn (who goes first alternates), `seconds` at `rate` requests/s over 50 connections (orders from
2,000 customers in turn, each with their own token, as in `bench.compare`), and counts the CPU
time of each side's process groups from the start of the run until the side has stored every
order it accepted and is quiet again: all the work the run's requests caused, in both services
(HTTP workers, consumers, outbox relays), and in the order service's alone. (Counting only
while the load runs would leave out whatever the consumers and relays finish after it, a share
that moves from run to run.) Prints every run and, per path, the medians and head/base of both,
and the spread of each side's rounds (max/min): a ratio inside the sides' own spread is noise.

    python -m bench.cpu --base 3fc7bee [--rate 1500] [--rounds 4] [--seconds 8] [--paths kafka,sync]
        [--trace-ratio 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.baseline_access import baseline_access
from bench.compare import (
    PATHS,
    ROOT,
    clean,
    cpu_seconds,
    drive,
    make_sides,
    prepare_load,
    say,
    settle,
    start_services,
    stop_services,
    trace,
    worktree,
)
from bench.customers import warm_token_caches
from bench.loadgen import ensure_shopload
from devstack.settings import load_stack_settings

CONNECTIONS = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rate", type=float, default=1500.0, help="requests per second")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--paths", help=f"comma-separated, of {','.join(PATHS)} (default all)", default=""
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        help="the head traces this share of requests to an OTLP sink that keeps nothing "
        "(bench.otlp_sink, its CPU not counted); default: tracing off on both sides",
    )
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p] or list(PATHS)
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    settings = load_stack_settings()
    ensure_shopload()
    sides = make_sides(worktree(args.base), (ROOT, "head"), settings)
    sink = None if args.trace_ratio is None else trace(sides[1], args.trace_ratio)
    if customers := sides[0].customers:
        say(f"orders from {customers.describe()}")
    logs = ROOT / "bench" / "results" / "cpu-logs"
    logs.mkdir(parents=True, exist_ok=True)
    per_request: dict[tuple[str, str], list[float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="shop-cpu-"))  # the requests files (tokens)
    clean(settings, sides)
    access = contextlib.ExitStack()  # closed last, after the services stopped
    try:
        access.enter_context(baseline_access(settings, sides))
        for side in sides:
            start_services(side, logs)
            prepare_load(side, scratch)
            if side.customers:  # so that no round pays the first check of a token
                warm_token_caches(f"http://127.0.0.1:{side.order_port}", side.customers, scratch)
        for round_no in range(args.rounds):
            for path in paths:
                for side in sides if round_no % 2 == 0 else sides[::-1]:
                    settle(settings, sides, 60.0)
                    groups = {p.pid for p in side.processes}
                    orders = {side.processes[-1].pid}  # the order service's process group
                    before, before_orders = cpu_seconds(groups), cpu_seconds(orders)
                    result = drive(side, path, CONNECTIONS, args.seconds, rate=args.rate)
                    settle(settings, [side], 60.0)  # what the run left to store and relay
                    used = cpu_seconds(groups) - before
                    used_orders = cpu_seconds(orders) - before_orders
                    answered = max(result.count(200, 201, 202), 1)
                    micros = used / answered * 1e6
                    per_request.setdefault((path, side.name), []).append(micros)
                    in_orders = used_orders / answered * 1e6
                    per_request.setdefault((path, f"{side.name} orders"), []).append(in_orders)
                    say(
                        f"round {round_no + 1} {path:8} {side.name}: {answered} answered, "
                        f"{used:.2f} CPU s, {micros:.0f} us per request ({in_orders:.0f} in the "
                        f"order service), p99 {result.p99_ms:.1f} ms"
                    )
    finally:
        stop_services(sides)
        if sink is not None:
            sink.terminate()
            sink.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
        clean(settings, sides)
        access.close()
    for path in paths:
        base = statistics.median(per_request[(path, "base")])
        head = statistics.median(per_request[(path, "head")])
        ratio = head / base
        spread = {
            name: max(per_request[(path, name)]) / min(per_request[(path, name)])
            for name in ("base", "head")
        }
        say(
            f"{path}: base {base:.0f} us, head {head:.0f} us per request; head/base {ratio:.3f} "
            f"(rounds spread base {spread['base']:.3f}, head {spread['head']:.3f})"
        )
        base_orders = statistics.median(per_request[(path, "base orders")])
        head_orders = statistics.median(per_request[(path, "head orders")])
        say(
            f"{path}: in the order service's processes base {base_orders:.0f} us, "
            f"head {head_orders:.0f} us; head/base {head_orders / base_orders:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
