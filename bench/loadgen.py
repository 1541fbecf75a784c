"""The load generator: shopload (Go, standard library only, source in bench/shopload/), built
here with the installed Go on first use, run as a subprocess, its JSON parsed.

shopload takes each request's Authorization header and body from a file (`-requests`), so the
order load comes from many customers, each with their own token (`bench.customers`); oha, used
before, could only send one header to all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shop.access.dev_issuer import dev_token, ensure_dev_key
from shop.settings import Settings

SOURCE = Path(__file__).resolve().parent / "shopload"
CACHE = Path.home() / ".cache" / "shop" / "bin"
_FALLBACK_GO = Path("/usr/local/go/bin/go")


def catalogue_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header of the bench's catalogue operator, who creates the products
    the customers order: a token from the development issuer (`make up` made its key) with
    the scope products:write and nothing else. Orders are placed by customers
    (`bench.customers`)."""
    ensure_dev_key(settings)
    token = dev_token(
        settings, subject="bench-catalogue", scopes=["products:write"], ttl_seconds=6 * 3600
    )
    return {"Authorization": f"Bearer {token}"}


def source_digest(source: Path = SOURCE) -> str:
    """The first 12 hex digits of the sha256 of a Go tool's sources (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(source.iterdir()):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def go_command() -> str:
    """Go: $GO, else `go` on PATH, else /usr/local/go/bin/go."""
    found = os.environ.get("GO") or shutil.which("go")
    if found:
        return found
    if _FALLBACK_GO.exists():
        return str(_FALLBACK_GO)
    raise RuntimeError("shopload is built with Go: install it or name it in $GO")


def ensure_shopload() -> Path:
    """The shopload binary of the current sources (`ensure_go_tool`)."""
    return ensure_go_tool(SOURCE)


def ensure_go_tool(source: Path) -> Path:
    """The binary of the Go tool in `source` (bench/shopload, bench/soakload), built (a few
    seconds, no network) into ~/.cache/shop/bin/<name>-<digest>/ if it is not there yet. The
    build goes to a temporary name and is renamed when complete, so an interrupted build is
    never taken for a binary."""
    name = source.name
    binary = CACHE / f"{name}-{source_digest(source)}" / name
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{name}-{os.getpid()}.partial")
    print(f"bench: building {name} into {binary.parent} ...", flush=True)
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",  # never download a toolchain
        "GOPROXY": "off",  # standard library only: nothing to fetch
        "GOWORK": "off",
        "GOFLAGS": "",
    }
    try:
        done = subprocess.run(
            [go_command(), "build", "-trimpath", "-o", str(partial), "."],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"building {name} failed: {done.stderr[-2000:]}")
        os.replace(partial, binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return binary


def shopload_version() -> str:
    """`shopload <digest> (go<version>)`, for the reports."""
    done = subprocess.run(
        [str(ensure_shopload()), "-version"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().replace("shopload", f"shopload {source_digest()}", 1)


@dataclass
class LoadResult:
    """One shopload run, reduced to what the report shows."""

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
    requests: Path | None = None,
    rate: float | None = None,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    count: int | None = None,
) -> LoadResult:
    """Drive `url` for `seconds` with `connections` connections, closed loop or at `rate`/s.

    `requests` is a file of `<Authorization value>\\t<body>` lines (`bench.customers`), taken
    in turn; without it every request is the same, with `headers`. `count` stops it after that
    many requests (or at `seconds`, whichever comes first). At a fixed rate latency
    counts from when each request was due (coordinated omission corrected), so the percentiles
    are those an open-loop client sees. Requests that fail or time out are counted, and their
    latency too.
    """
    cmd = [
        str(ensure_shopload()),
        "-c",
        str(connections),
        "-z",
        f"{seconds}s",
        "-m",
        method,
        "-timeout",
        f"{timeout}s",
    ]
    if requests is not None:
        cmd += ["-requests", str(requests)]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if rate is not None:
        cmd += ["-q", str(rate)]
    if count is not None:
        cmd += ["-n", str(count)]
    cmd.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + timeout + 120, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"shopload failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse(done.stdout, connections=connections, rate=rate, seconds=seconds, cpu=cpu)


def parse(
    output: str, *, connections: int, rate: float | None, seconds: float, cpu: float
) -> LoadResult:
    """A LoadResult from shopload's JSON (the shape of oha's, which the bench parsed before)."""
    data = json.loads(output)
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
