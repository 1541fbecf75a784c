"""`/healthz`, `/readyz` and `/metrics`: what an orchestrator and Prometheus ask a service."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from pydantic import BaseModel
from starlette.responses import PlainTextResponse, Response

from shop.web import openapi
from shop.web.problems import JSONResponse, problem

HealthCheck = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)

# What `/readyz` says of each dependency (`checks`).
OK, FAILED, TIMED_OUT = "ok", "failed", "timed out"


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Ready(Health):
    """Every dependency answers: `checks` names each one."""

    checks: dict[str, str]


def health_router(checks: Callable[[], Mapping[str, HealthCheck]], *, timeout: float) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (its dependencies answer), `/metrics`."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health, response_class=JSONResponse)
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Ready,
        response_class=JSONResponse,
        responses={503: openapi.refusal(503, "A dependency does not answer: see `checks`.")},
    )
    async def readyz() -> Response:
        """The database and brokers this service needs answer. Otherwise 503 naming those that do
        not (`database`, `kafka`, `rabbitmq`); why is in the service's log."""
        named = checks()
        runs = (_run_check(name, check, timeout) for name, check in named.items())
        results = dict(zip(named, await asyncio.gather(*runs), strict=True))
        failing = [name for name, result in results.items() if result != OK]
        if not failing:
            return JSONResponse({"status": "ok", "checks": results})
        detail = f"Unreachable: {', '.join(failing)}"
        return problem(503, "Not ready", detail, checks=results, headers={"Retry-After": "1"})

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics (of every worker process, when there are several)."""
        return Response(_metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return router


def _metrics_text() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def _run_check(name: str, check: HealthCheck, timeout: float) -> str:
    """`ok`, `timed out` or `failed`: what a probe's answer says of one dependency. Why it
    failed goes to the log, not into the answer: an exception's text can name hosts,
    accounts, versions and paths, and the probe is public."""
    try:
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        log.warning("readiness: %s did not answer within %.1fs", name, timeout)
        return TIMED_OUT
    except Exception as exc:  # a readiness probe reports any failure instead of raising it
        log.warning("readiness: %s failed: %s: %s", name, type(exc).__name__, exc)
        return FAILED
    return OK
