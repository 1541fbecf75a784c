"""The product service's memory under many distinct large pages (issue 10's probe).

Makes sure 1,500 products with 2,000-character descriptions exist (named `memprobe-*`), then
asks for N distinct pages of up to 1,000 of them (`GET /products?limit=1000&name=memprobe&
max_price=...`, 32 at a time, as the catalogue operator, whose searches are not limited) and
prints the resident memory of the service's processes before, right after, and 5 s later.

    python -m bench.memory [N]     # N defaults to 4,000; the services of `make up` must run
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.loadgen import catalogue_headers
from shop.settings import load_settings

PRODUCTS = 1500


def resident_mb() -> int:
    """Resident memory of `shop serve products` and its worker processes, in MiB."""
    found = subprocess.run(
        ["pgrep", "-f", "shop serve products"], capture_output=True, text=True, check=False
    )
    pids = set(found.stdout.split())
    for parent in list(pids):
        children = subprocess.run(
            ["pgrep", "-P", parent], capture_output=True, text=True, check=False
        )
        pids |= set(children.stdout.split())
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kb += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
        )
    return total_kb // 1024


async def probe(pages: int) -> None:
    settings = load_settings()
    base = f"http://127.0.0.1:{settings.http.product_port}"
    operator = catalogue_headers(settings)
    async with httpx.AsyncClient(timeout=60, headers=operator) as client:
        have = len((await client.get(f"{base}/products?limit=1000&name=memprobe")).json())
        for i in range(have, PRODUCTS):
            made = await client.post(
                f"{base}/products",
                json={"name": f"memprobe-{i}", "description": "d" * 2000, "price": 5},
            )
            made.raise_for_status()
        print(f"resident before: {resident_mb()} MiB", flush=True)
        limit = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with limit:
                url = f"{base}/products?limit=1000&name=memprobe&max_price={5 + i / 100:.2f}"
                (await client.get(url)).raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(1, pages + 1)))
        seconds = time.monotonic() - started
        print(f"{pages} distinct pages in {seconds:.1f} s; resident after: {resident_mb()} MiB")
        await asyncio.sleep(5)
        print(f"resident 5 s later: {resident_mb()} MiB")


if __name__ == "__main__":
    asyncio.run(probe(int(sys.argv[1]) if len(sys.argv) > 1 else 4000))
