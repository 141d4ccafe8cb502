"""The whole exchange as `wlex demo` runs it: every service under the stack's supervisord
(settlement, matching, gateway), against the session's broker and PostgreSQL, with this
module's own topic prefix and database schemas."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from services.common import db
from services.devenv import kafka as kafka_runtime
from services.devenv.ports import free_port_block
from services.devenv.stack import PROJECT_ROOT, SERVICES, Stack, StackConfig
from services.gateway import registry
from tests.conftest import new_state_dir


@dataclass
class Exchange:
    stack: Stack
    gateway_url: str
    database_url: str
    gateway_schema: str
    settlement_schema: str
    topic_prefix: str
    settlement_url: str

    async def participant(self, role: str, name: str | None = None) -> tuple[str, str]:
        """(participant id, API key), registered as `wlex participants create` does."""
        conn = await asyncpg.connect(
            self.database_url, server_settings={"search_path": self.gateway_schema}
        )
        try:
            p, key = await registry.create(conn, role, name or f"e2e {role}", _now_ms())
        finally:
            await conn.close()
        return p["participant_id"], key

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gateway_url, timeout=10.0, trust_env=False,
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def exchange(kafka_bootstrap, database_url):
    run = uuid.uuid4().hex[:10]
    gateway_schema, settlement_schema = f"e2e_g_{run}", f"e2e_s_{run}"
    state_dir = new_state_dir("e2e")
    config = StackConfig(
        state_dir=state_dir,
        cache_dir=PROJECT_ROOT / ".wlex" / "kafka",
        http_port_base=free_port_block(len(SERVICES)),
        kafka_version=kafka_runtime.pinned_version(),
        topic_prefix=f"e{run}.",
        external_kafka=kafka_bootstrap,
        external_database=database_url,
        service_env={
            "WLEX_GATEWAY_DB_SCHEMA": gateway_schema,
            "WLEX_DB_SCHEMA": settlement_schema,
            # Auctions close on the matching clock's ticks: a short interval keeps the
            # test short.
            "WLEX_MATCHING_TICK_INTERVAL_MS": "200",
            # The settlement service's invariant audit every second, while trading: a
            # snapshot that broke one would be counted (audit_clean checks the count).
            "WLEX_LEDGER_CHECK_INTERVAL_S": "1",
        },
    )
    stack = Stack(config, log=lambda msg: print(f"[e2e] {msg}"))
    try:
        stack.up()
        services = stack.services()
        yield Exchange(stack, f"http://127.0.0.1:{services['gateway']}", database_url,
                       gateway_schema, settlement_schema, config.topic_prefix,
                       f"http://127.0.0.1:{services['settlement']}")  # fmt: skip
    finally:
        logs = stack.log_dir
        stack.down()
        for name in ("settlement", "matching", "gateway"):
            log = logs / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {name}.log (last lines)\n" + "\n".join(tail))
        if not os.environ.get("WLEX_E2E_KEEP"):
            shutil.rmtree(state_dir, ignore_errors=True)
        asyncio.run(_drop_schemas(database_url, gateway_schema, settlement_schema))


async def _drop_schemas(database_url: str, *schemas: str) -> None:
    for schema in schemas:
        await db.drop_schema(database_url, schema)
