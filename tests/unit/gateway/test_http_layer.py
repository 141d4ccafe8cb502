"""The HTTP layer without PostgreSQL or Kafka: answers given before either is used."""

import httpx
import orjson
import pytest

from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.deps import Deps


class NoSink:
    async def send(self, value: bytes, key: str) -> None:
        raise AssertionError("nothing may be sent")


@pytest.fixture
async def client():
    deps = Deps(pool=None, commands=NoSink(), config=GatewayConfig())  # type: ignore[arg-type]
    app = create_app(deps)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c


def problem(r: httpx.Response, status: int, reason: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = orjson.loads(r.content)
    assert doc["type"] == "https://wlex.dev/problems/" + reason
    return doc


async def test_no_key_is_401_with_a_bearer_challenge(client):
    r = await client.post("/v1/loads", json={}, headers={"Idempotency-Key": "a"})
    problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == 'Bearer realm="wlex"'
    r = await client.get("/v1/loads", headers={"Authorization": "Bearer nope"})
    problem(r, 401, "unauthenticated")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_unknown_paths_and_methods_are_problems(client):
    problem(await client.get("/v1/nothing"), 404, "not_found")
    problem(await client.delete("/v1/reference"), 405, "method_not_allowed")


async def test_reference_is_public_and_cacheable(client):
    r = await client.get("/v1/reference")
    assert r.status_code == 200 and "max-age" in r.headers["cache-control"]
    assert len(r.json()["vehicle_classes"]) == 35


async def test_before_main_is_ready_the_api_answers_503():
    app = create_app(None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/v1/loads")
    problem(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1"
