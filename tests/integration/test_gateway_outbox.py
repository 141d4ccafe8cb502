"""Participant commands leave the gateway through its outbox: registering and suspending
a participant writes participant.register / participant.suspend in the same
transaction, and the relay (services.common.outbox) sends them to `commands`, in order,
keyed by the participant."""

from __future__ import annotations

import asyncio

import pytest

from services.common import schemas
from services.common.outbox import OutboxRelay
from services.gateway import registry
from tests.integration import test_gateway_support as support

gateway = support.gateway  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def relay_all(gateway, relay: OutboxRelay) -> int:
    sent = 0
    for _ in range(20):
        n = await relay.relay_once()
        if n == 0:
            return sent
        sent += n
    raise AssertionError("the outbox did not drain in 20 rounds")


async def test_register_and_suspend_reach_commands_in_order_once(gateway, topic_prefix):
    relay = OutboxRelay(gateway.deps.pool, registry.OUTBOX, gateway.deps.commands.producer,
                        topic_prefix)  # fmt: skip
    shipper, _ = await gateway.participant("shipper")
    insurer, _ = await gateway.participant("insurer")
    async with gateway.deps.pool.acquire() as conn:
        assert await registry.suspend(conn, shipper, support.now_ms()) is not None
        # Suspending again changes nothing and announces nothing.
        assert await registry.suspend(conn, shipper, support.now_ms() + 5) is not None
    assert await relay_all(gateway, relay) == 3
    assert await relay_all(gateway, relay) == 0  # marked sent: a second round sends nothing

    got = await gateway.commands(until=3)
    for cmd in got:
        schemas.validate({k: v for k, v in cmd.items() if k != "_key"})
    assert [(c["type"], c["data"]["participant_id"], c["_key"]) for c in got] == [
        ("participant.register", shipper, shipper),
        ("participant.register", insurer, insurer),
        ("participant.suspend", shipper, shipper),
    ]
    assert got[1]["data"]["role"] == "insurer"
    assert len(await gateway.commands(until=4, timeout_s=2)) == 3


async def test_a_registration_rolled_back_announces_nothing(gateway, topic_prefix):
    relay = OutboxRelay(gateway.deps.pool, registry.OUTBOX, gateway.deps.commands.producer,
                        topic_prefix)  # fmt: skip

    class Abort(Exception):
        pass

    async with gateway.deps.pool.acquire() as conn:
        with pytest.raises(Abort):
            async with conn.transaction():
                await registry.create(conn, "carrier", "gone co", support.now_ms())
                raise Abort
    assert await relay_all(gateway, relay) == 0
    assert await gateway.count("participant") == 0


async def test_two_relays_on_one_table_send_each_row_once(gateway, topic_prefix):
    producer = gateway.deps.commands.producer
    relays = [OutboxRelay(gateway.deps.pool, registry.OUTBOX, producer, topic_prefix,
                          batch_max=2) for _ in range(2)]  # fmt: skip
    ids = [(await gateway.participant("carrier"))[0] for _ in range(7)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        got = await gateway.commands(until=7)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert [c["data"]["participant_id"] for c in got] == ids
    assert len(await gateway.commands(until=8, timeout_s=2)) == 7
    assert (
        await gateway.deps.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_ms IS NULL") == 0
    )
