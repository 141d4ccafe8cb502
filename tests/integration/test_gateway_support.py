"""Fixtures and helpers of the gateway's integration tests (no tests here).

`gateway` is the real app (create_app) on the real PostgreSQL (a schema of the test's
own) and the real broker (a `commands` topic of the test's own), called in-process
through httpx's ASGI transport. Participants are made as the CLI makes them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common import db
from services.common.envelope import decode
from services.common.kafka import make_producer
from services.gateway import registry
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.deps import CommandSink, Deps
from tests.integration.kafka_helpers import read_committed

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def market_load(**overrides) -> dict:
    t = now_ms()
    body = {
        "mode": "market",
        "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
        "weight_kg": 12_000,
        "volume_dm3": 30_000,
        "cargo_category": "building-materials",
        "pickup_from": t + HOUR_MS,
        "pickup_to": t + 5 * HOUR_MS,
        "deliver_by": t + 24 * HOUR_MS,
        "declared_value_fen": 50_000_000,
        "limit_fen": 350_000,
    }
    body.update(overrides)
    return body


def auction_load(**overrides) -> dict:
    body = market_load()
    del body["limit_fen"]
    body.update(
        mode="auction",
        auction={
            "closes_at": now_ms() + 2 * HOUR_MS,
            "reserve_fen": 400_000,
            "instant_fen": 250_000,
            "sealed": False,
        },
    )
    body.update(overrides)
    return body


def offer(**overrides) -> dict:
    t = now_ms()
    body = {
        "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
        "capacity_kg": 18_000,
        "capacity_dm3": 58_000,
        "available_from": t,
        "available_to": t + 10 * HOUR_MS,
        "ask_fen": 300_000,
        "consolidate": True,
    }
    body.update(overrides)
    return body


def auth(key: str, idem: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return headers


@dataclass
class Gateway:
    app: object
    deps: Deps
    client: httpx.AsyncClient
    bootstrap: str
    topic: str
    keys: dict[str, str] = field(default_factory=dict)

    async def participant(self, role: str, name: str | None = None) -> tuple[str, str]:
        async with self.deps.pool.acquire() as conn:
            p, key = await registry.create(conn, role, name or f"{role} co", now_ms())
        return p["participant_id"], key

    async def post(self, path: str, key: str, body=None, idem: str | None = "auto", **kw):
        if idem == "auto":
            idem = str(uuid.uuid4())
        return await self.client.post(path, json=body, headers=auth(key, idem), **kw)

    async def commands(self, until: int = 1, timeout_s: float = 10.0) -> list[dict]:
        """Every envelope on the test's commands topic (waits for `until` of them)."""
        records = await read_committed(self.bootstrap, self.topic, until=until, timeout_s=timeout_s)
        return [decode(r.value) | {"_key": r.key.decode() if r.key else None} for r in records]

    async def count(self, table: str) -> int:
        return await self.deps.pool.fetchval(f"SELECT count(*) FROM {table}")


async def create_commands_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


@pytest.fixture
async def gateway(kafka_bootstrap, database_url, pg_schema, topic_prefix):
    topic = topic_prefix + "commands"
    await create_commands_topic(kafka_bootstrap, topic)
    pool = await db.create_pool(database_url, schema=pg_schema, max_size=4)
    await db.migrate(pool, "gateway")
    producer = make_producer(kafka_bootstrap, client_id="gateway-test")
    await producer.start()
    config = GatewayConfig(db_schema=pg_schema, rate_per_s=1000, rate_burst=1000)
    deps = Deps(pool=pool, commands=CommandSink(producer, topic, 5.0), config=config)
    app = create_app(deps)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    try:
        yield Gateway(app, deps, client, kafka_bootstrap, topic)
    finally:
        await client.aclose()
        await producer.stop()
        await db.close_pool(pool)


def problem(response: httpx.Response, status: int, reason: str) -> dict:
    """Asserts a problem+json answer of this status and reason word; returns it."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    doc = orjson.loads(response.content)
    assert doc["type"] == f"https://wlex.dev/problems/{reason}", doc
    assert doc["reason"] == reason and doc["status"] == status
    return doc
