"""/metrics and /healthz, through the ASGI app in memory (no server, no socket)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from services.common.observability import PROBLEM_JSON, HealthChecks, app, router


def client(checks: HealthChecks, registry: CollectorRegistry | None = None) -> httpx.AsyncClient:
    asgi = app(checks, registry or CollectorRegistry())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://svc")


async def passes() -> None:
    return None


async def fails() -> None:
    raise ConnectionRefusedError("broker 127.0.0.1:19092 refused")


async def test_metrics_exposes_a_registered_counter():
    registry = CollectorRegistry()
    deals = Counter("wlex_test_deals_total", "Deals made.", registry=registry)
    deals.inc(3)
    async with client(HealthChecks(), registry) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "wlex_test_deals_total 3.0" in r.text.splitlines()


async def test_healthz_is_200_when_every_check_passes():
    checks = HealthChecks()
    checks.add("postgres", passes)
    checks.add("kafka", passes)
    async with client(checks) as c:
        r = await c.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert {n: v["status"] for n, v in body["checks"].items()} == {"postgres": "ok", "kafka": "ok"}


async def test_healthz_is_503_problem_when_one_check_fails():
    checks = HealthChecks()
    checks.add("postgres", passes)
    checks.add("kafka", fails)
    async with client(checks) as c:
        r = await c.get("/healthz")
    assert r.status_code == 503
    assert r.headers["content-type"] == PROBLEM_JSON
    body = r.json()
    assert body["status"] == 503
    assert body["detail"] == "readiness check failed: kafka"
    assert body["checks"]["postgres"]["status"] == "ok"
    assert body["checks"]["kafka"] == {
        "status": "fail",
        "detail": "ConnectionRefusedError: broker 127.0.0.1:19092 refused",
    }


async def test_healthz_fails_a_check_that_hangs_after_its_timeout():
    async def hangs() -> None:
        await asyncio.sleep(60)

    checks = HealthChecks(timeout_s=0.05)
    checks.add("kafka", hangs)
    async with client(checks) as c:
        r = await asyncio.wait_for(c.get("/healthz"), timeout=5)
    assert r.status_code == 503
    assert r.json()["checks"]["kafka"]["detail"] == "no answer within 0.05s"


async def test_router_mounts_in_another_app_and_stays_out_of_its_openapi():
    gateway = FastAPI()
    gateway.include_router(router(HealthChecks(), CollectorRegistry()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="http://gw"
    ) as c:
        assert (await c.get("/healthz")).status_code == 200
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert "/healthz" not in paths and "/metrics" not in paths
