"""The load generator: oha (Rust, from crates.io), driven as a subprocess, its JSON parsed."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shop.settings import Settings
from shop.tokens import dev_token, ensure_dev_key

OHA_VERSION = "1.16.0"
_CARGO_BIN = Path.home() / ".cargo" / "bin"


def operator_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header of the bench's requests: a token from the development issuer
    (`make up` made its key) for an operator who may write products and place orders for any
    user, as the bench's order bodies name many users."""
    ensure_dev_key(settings)
    token = dev_token(
        settings, subject="bench", scopes=["products:write", "orders:admin"], ttl_seconds=6 * 3600
    )
    return {"Authorization": f"Bearer {token}"}


def ensure_oha() -> str:
    """The oha binary, installed with cargo (a few minutes, once) if it is missing."""
    found = shutil.which("oha") or (
        str(_CARGO_BIN / "oha") if (_CARGO_BIN / "oha").exists() else None
    )
    if found:
        return found
    cargo = shutil.which("cargo") or str(_CARGO_BIN / "cargo")
    print(f"bench: installing oha {OHA_VERSION} with cargo (once; a few minutes) ...", flush=True)
    subprocess.run(
        [cargo, "install", "oha", "--locked", "--version", OHA_VERSION], check=True, timeout=1800
    )
    return str(_CARGO_BIN / "oha")


@dataclass
class LoadResult:
    """One oha run, reduced to what the report shows."""

    connections: int
    rate: float | None  # requests/s asked for (open loop); None = as fast as possible
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    generator_cores: float  # CPU the load generator itself used, in cores

    def count(self, *codes: int) -> int:
        return sum(self.statuses.get(str(code), 0) for code in codes)

    @property
    def failed(self) -> int:
        ok = self.count(200, 201, 202, 409)
        return self.requests - ok

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_load(
    url: str,
    *,
    connections: int,
    seconds: float,
    body_lines: Path | None = None,
    rate: float | None = None,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Drive `url` for `seconds` with `connections` connections, closed loop or at `rate`/s.

    At a fixed rate oha corrects latency for coordinated omission (a late request counts from
    when it should have been sent), so the percentiles are those an open-loop client sees.
    """
    cmd = [
        ensure_oha(),
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        f"{seconds}s",
        "-c",
        str(connections),
        "-m",
        method,
        "-w",
    ]
    if body_lines is not None:
        cmd += ["-Z", str(body_lines), "-T", "application/json"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if rate is not None:
        cmd += ["-q", str(rate), "--latency-correction"]
    cmd.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"oha failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    pct = data["latencyPercentiles"]
    statuses = {str(k): int(v) for k, v in data.get("statusCodeDistribution", {}).items()}
    errors = {str(k): int(v) for k, v in data.get("errorDistribution", {}).items()}
    requests = sum(statuses.values()) + sum(errors.values())
    total = float(data["summary"]["total"]) or seconds
    return LoadResult(
        connections=connections,
        rate=rate,
        seconds=round(total, 3),
        requests=requests,
        rps=round(sum(statuses.values()) / total, 1),
        p50_ms=_ms(pct.get("p50")),
        p90_ms=_ms(pct.get("p90")),
        p99_ms=_ms(pct.get("p99")),
        p999_ms=_ms(pct.get("p99.9")),
        statuses=statuses,
        errors=errors,
        generator_cores=round(cpu / total, 2),
    )


def _ms(seconds: float | None) -> float:
    return round((seconds or 0.0) * 1000, 3)
