"""`/healthz`, `/readyz` and `/metrics`: what an orchestrator and Prometheus ask a service."""

from __future__ import annotations

import asyncio
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
        """The database and brokers this service needs answer."""
        named = checks()
        outcomes = await asyncio.gather(*(_run_check(check, timeout) for check in named.values()))
        results = dict(zip(named, outcomes, strict=True))
        failing = [name for name, result in results.items() if result != "ok"]
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


async def _run_check(check: HealthCheck, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except Exception as exc:  # a readiness probe reports any failure instead of raising it
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return "ok"
