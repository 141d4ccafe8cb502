"""Read models against the real broker and PostgreSQL: loads posted through the API,
outcomes produced to the test's market/settlement/shipments topics as the engine and
settlement would, the projector running as in the gateway; GET shows each status, a
redelivered event projects once, the SSE feed delivers in order and resumes without
gap or duplicate, and shipment actions land on `shipments` or are refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import orjson
import pytest

from services.common import db, schemas
from services.common.envelope import decode, encode, make, new_id
from services.common.kafka import make_producer
from services.common.topics import create_topics
from services.gateway import problems
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.deps import CommandSink, Deps
from services.gateway.projection_service import TOPICS, ProjectionService, Projector
from services.gateway.registry import create as create_participant
from tests.conftest import schema_pool
from tests.integration.kafka_helpers import read_committed
from tests.integration.test_gateway_support import auction_load, auth, market_load, problem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
LANE_KEY = "420100>420600>van-9.6"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Exchange:
    """The gateway app with its projector, and the engine's and settlement's pens."""

    def __init__(self, deps, client, producer, prefix, bootstrap) -> None:
        self.deps, self.client, self.producer = deps, client, producer
        self.prefix, self.bootstrap = prefix, bootstrap

    async def participant(self, role: str) -> tuple[str, str]:
        async with self.deps.pool.acquire() as conn:
            p, key = await create_participant(conn, role, f"{role} co", now_ms())
        return p["participant_id"], key

    async def post(self, path: str, key: str, body=None, idem: str | None = None):
        headers = auth(key, idem or str(uuid.uuid4()))
        return await self.client.post(path, json=body, headers=headers)

    async def get(self, path: str, key: str, **kw):
        return await self.client.get(path, headers=auth(key) | kw.pop("headers", {}), **kw)

    async def emit(self, topic: str, type_: str, data: dict, *, key: str = LANE_KEY, cause=None):
        """Produce an event as its service would; returns the envelope."""
        env = make(type_, data, key, "test", now_ms(), cause=cause)
        schemas.validate(env)
        await self.send(topic, env)
        return env

    async def send(self, topic: str, env: dict) -> None:
        await self.producer.send_and_wait(
            self.prefix + topic, encode(env), key=(env["key"] or "k").encode()
        )

    async def load_of(self, key: str, body: dict | None = None) -> tuple[str, str]:
        r = await self.post("/v1/loads", key, body or market_load())
        assert r.status_code == 202, r.text
        return r.json()["load_id"], r.json()["command_id"]

    async def until(self, load_id: str, key: str, status: str, timeout_s: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = (await self.get(f"/v1/loads/{load_id}", key)).json()
            if doc["status"] == status:
                return doc
            assert time.monotonic() < deadline, f"load stayed {doc['status']}, not {status}"
            await asyncio.sleep(0.05)

    async def log_types(self, load_id: str) -> list[str]:
        rows = await self.deps.pool.fetch(
            "SELECT type FROM load_event WHERE load_id = $1 ORDER BY seq", load_id
        )
        return [r[0] for r in rows]

    async def until_logged(self, load_id: str, n: int, timeout_s: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(types := await self.log_types(load_id)) < n:
            assert time.monotonic() < deadline, f"log has {types}, wanted {n} entries"
            await asyncio.sleep(0.05)
        return types

    async def deal(self, load_id: str, shipper: str, carrier: str, price_fen=300_000) -> str:
        await self.emit("market", "load.rested", {"load_id": load_id})
        env = await self.emit(
            "market",
            "deal.made",
            {
                "deal_id": f"deal:{load_id}", "load_id": load_id, "offer_id": None,
                "bid_id": None, "shipper_id": shipper, "carrier_id": carrier,
                "price_fen": price_fen, "lane": LANE,
            },
        )  # fmt: skip
        return env["data"]["deal_id"]

    async def shipments(self, until: int) -> list[dict]:
        records = await read_committed(
            self.bootstrap, self.prefix + "shipments", until=until, timeout_s=10
        )
        return [decode(r.value) | {"_key": r.key.decode()} for r in records]


@pytest.fixture(scope="module")
async def ex(kafka_bootstrap, database_url):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(kafka_bootstrap, prefix, partitions=1)
    async with schema_pool(database_url, max_size=6) as (schema, pool):
        await db.migrate(pool, "gateway")
        producer = make_producer(kafka_bootstrap, client_id="read-models-test")
        await producer.start()
        config = GatewayConfig(
            db_schema=schema, rate_per_s=1000, rate_burst=1000,
            sse_keepalive_s=0.3, sse_max_s=2.0, sse_poll_s=0.2,
        )  # fmt: skip
        deps = Deps(
            pool=pool,
            commands=CommandSink(producer, prefix + "commands", 5.0),
            config=config,
            shipments=CommandSink(producer, prefix + "shipments", 5.0),
        )
        projection = ProjectionService(
            Projector(pool, on_applied=deps.load_log.notify),
            kafka_bootstrap,
            [prefix + t for t in TOPICS],
            group_id=f"{prefix}gateway-projection",
            producer=producer,
            dlq_topic=prefix + "dlq",
            parked_retry_s=0.1,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(projection.run(stop))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(deps)),
            base_url="http://gateway",
            timeout=20,
        )
        try:
            yield Exchange(deps, client, producer, prefix, kafka_bootstrap)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await client.aclose()
            await producer.stop()


def sse_events(text: str) -> tuple[list[tuple[int, str, dict]], int]:
    """(id, event, envelope) of each event of an SSE body, and the comment count."""
    events, comments = [], 0
    for block in text.split("\n\n"):
        if not block:
            continue
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "id" in fields:
            events.append((int(fields["id"]), fields["event"], orjson.loads(fields["data"])))
    return events, comments


# ---------------------------------------------------------------------------- statuses


async def test_a_market_load_shows_each_status_to_settled(ex):
    shipper, skey = await ex.participant("shipper")
    carrier, ckey = await ex.participant("carrier")
    load_id, _ = await ex.load_of(skey)
    assert (await ex.get(f"/v1/loads/{load_id}", skey)).json()["status"] == "requested"

    funded = {"load_id": load_id, "shipper_id": shipper, "hold_fen": 350_000, "transfer_id": "t1"}
    await ex.emit("settlement", "load.funded", funded, key=shipper)
    await ex.until_logged(load_id, 1)
    deal_id = await ex.deal(load_id, shipper, carrier)
    doc = await ex.until(load_id, skey, "dealt")
    assert doc["deal"] == {
        "deal_id": deal_id, "carrier_id": carrier, "offer_id": None, "bid_id": None,
        "price_fen": 300_000,
    }  # fmt: skip

    r = await ex.post(f"/v1/deals/{deal_id}/pickup", ckey)
    assert r.status_code == 202, r.text
    assert (
        r.json()["type"] == "shipment.picked_up" and r.headers["location"] == f"/v1/deals/{deal_id}"
    )
    # The gateway knows at once what it sent: no wait for the projector.
    assert (await ex.get(f"/v1/loads/{load_id}", skey)).json()["status"] == "picked_up"
    r = await ex.post(f"/v1/deals/{deal_id}/delivered", ckey, {"proof_ref": "POD-7"})
    assert r.status_code == 202, r.text
    await ex.until_logged(load_id, 5)  # funded, rested, deal, picked up, delivered
    settled = {
        "deal_id": deal_id, "load_id": load_id, "shipper_id": shipper, "carrier_id": carrier,
        "price_fen": 300_000, "fee_fen": 6_000, "payout_fen": 294_000, "premium_fen": 0,
        "insurer_id": None, "refund_fen": 0, "how": "delivered",
    }  # fmt: skip
    await ex.emit("settlement", "deal.settled", settled, key=deal_id)
    await ex.until(load_id, skey, "settled")

    deal = (await ex.get(f"/v1/deals/{deal_id}", ckey)).json()
    assert deal["status"] == "settled" and deal["lane"] == LANE
    assert deal["shipment"]["proof_ref"] == "POD-7" and deal["shipment"]["picked_up_at"]
    assert deal["settlement"]["payout_fen"] == 294_000 and deal["dispute"] is None
    assert (await ex.get(f"/v1/deals/{deal_id}", skey)).status_code == 200
    _, okey = await ex.participant("operator")
    assert (await ex.get(f"/v1/deals/{deal_id}", okey)).status_code == 200
    _, other = await ex.participant("carrier")
    problem(await ex.get(f"/v1/deals/{deal_id}", other), 404, problems.NOT_FOUND)
    _, insurer = await ex.participant("insurer")
    problem(await ex.get(f"/v1/deals/{deal_id}", insurer), 403, problems.FORBIDDEN)

    listed = (await ex.get("/v1/loads", skey, params={"status": "settled"})).json()
    assert [x["load_id"] for x in listed["items"]] == [load_id]

    # The feed of a settled load: everything, in order, then the stream ends.
    r = await ex.get(f"/v1/loads/{load_id}/events", skey)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, _ = sse_events(r.text)
    assert [e[0] for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e[1] for e in events] == [
        "load.funded", "load.rested", "deal.made", "shipment.picked_up",
        "shipment.delivered", "deal.settled",
    ]  # fmt: skip
    assert all(e[2]["type"] == e[1] for e in events)
    resumed, _ = sse_events(
        (await ex.get(f"/v1/loads/{load_id}/events", skey, headers={"Last-Event-ID": "3"})).text
    )
    assert resumed == events[3:]


async def test_rejections_cancels_and_unawarded_auctions(ex):
    shipper, skey = await ex.participant("shipper")
    gate_refused, _ = await ex.load_of(skey)
    await ex.emit(
        "settlement", "load.rejected",
        {"load_id": gate_refused, "shipper_id": shipper, "reason": "insufficient_funds"},
    )  # fmt: skip
    doc = await ex.until(gate_refused, skey, "rejected")
    assert doc["reject_reason"] == "insufficient_funds"

    engine_refused, command_id = await ex.load_of(skey)
    await ex.emit(
        "market", "order.rejected", {"ref_id": engine_refused, "reason": "expired"},
        cause=command_id,
    )  # fmt: skip
    assert (await ex.until(engine_refused, skey, "rejected"))["reject_reason"] == "expired"

    cancelled, _ = await ex.load_of(skey)
    await ex.emit("market", "load.rested", {"load_id": cancelled})
    await ex.until(cancelled, skey, "open")
    r = await ex.post(f"/v1/loads/{cancelled}/cancel", skey)
    cancel_cmd = r.json()["command_id"]
    # A refused cancel (the cause is the cancel's id, the ref the load's) rejects nothing.
    await ex.emit(
        "market", "order.rejected", {"ref_id": cancelled, "reason": "not_owner"}, cause=cancel_cmd
    )
    await ex.until_logged(cancelled, 2)
    assert (await ex.get(f"/v1/loads/{cancelled}", skey)).json()["status"] == "open"
    await ex.emit("market", "order.cancelled", {"ref_id": cancelled}, cause=cancel_cmd)
    await ex.until(cancelled, skey, "cancelled")

    auction, _ = await ex.load_of(skey, auction_load())
    await ex.emit(
        "market", "auction.opened",
        {"load_id": auction, "closes_at": now_ms() + 60_000, "sealed": False},
    )  # fmt: skip
    await ex.until(auction, skey, "open")
    carrier, _ = await ex.participant("carrier")
    for bid_id, price in (("b-1", 380_000), ("b-2", 360_000)):
        await ex.emit(
            "market", "bid.accepted",
            {"bid_id": f"{auction}/{bid_id}", "load_id": auction, "carrier_id": carrier,
             "price_fen": price, "best_fen": price},
        )  # fmt: skip
    await ex.emit("market", "order.cancelled", {"ref_id": f"{auction}/b-2"})
    await ex.until_logged(auction, 4)
    bids = (await ex.get(f"/v1/loads/{auction}", skey)).json()["bids"]
    assert [(b["price_fen"], b["status"]) for b in bids] == [
        (380_000, "live"),
        (360_000, "withdrawn"),
    ]
    await ex.emit(
        "market", "auction.closed", {"load_id": auction, "bid_id": None, "price_fen": None}
    )
    await ex.until(auction, skey, "expired")

    # Bids and loads are the owner's alone.
    _, other = await ex.participant("shipper")
    problem(await ex.get(f"/v1/loads/{auction}", other), 404, "unknown_order")
    problem(await ex.get(f"/v1/loads/{auction}/events", other), 404, "unknown_order")
    _, ckey = await ex.participant("carrier")
    problem(await ex.get(f"/v1/loads/{auction}/events", ckey), 403, problems.FORBIDDEN)


async def test_the_same_event_delivered_twice_projects_once(ex):
    shipper, skey = await ex.participant("shipper")
    load_id, _ = await ex.load_of(skey)
    rested = make("load.rested", {"load_id": load_id}, LANE_KEY, "test", now_ms())
    funded = make(
        "load.funded",
        {"load_id": load_id, "shipper_id": shipper, "hold_fen": 1, "transfer_id": "t"},
        shipper, "settlement", now_ms(),
    )  # fmt: skip
    for env in (rested, rested, funded, funded):
        await ex.send("market" if env is rested else "settlement", env)
    await ex.until_logged(load_id, 2)
    await asyncio.sleep(0.5)  # time for a wrongly applied copy to show
    assert sorted(await ex.log_types(load_id)) == ["load.funded", "load.rested"]
    # And a replay of the whole topic by a new group of the same schema changes nothing.
    again = Projector(ex.deps.pool)
    await again.start()
    assert await again.apply([rested, funded]) == set()
    assert len(await ex.log_types(load_id)) == 2


async def test_an_event_that_beats_the_load_row_waits_for_it(ex):
    shipper, skey = await ex.participant("shipper")
    load_id = new_id(now_ms())
    await ex.emit(
        "settlement", "load.rejected",
        {"load_id": load_id, "shipper_id": shipper, "reason": "insufficient_funds"},
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not await ex.deps.pool.fetchval(
        "SELECT count(*) FROM projection_parked WHERE subject = $1", load_id
    ):
        assert time.monotonic() < deadline, "the event was not parked"
        await asyncio.sleep(0.05)
    # The gateway's own row, as POST /v1/loads writes it after the broker's ack.
    data = {"load_id": load_id, "shipper_id": shipper, **market_load()}
    await ex.deps.pool.execute(
        "INSERT INTO load (load_id, shipper_id, status, origin, destination, vehicle_class,"
        " command_id, data, requested_ms) VALUES ($1, $2, 'requested', '420100', '420600',"
        " 'van-9.6', $3, $4::jsonb, $5)",
        load_id, shipper, "cmd-" + load_id, orjson.dumps(data).decode(), now_ms(),
    )  # fmt: skip
    await ex.until(load_id, skey, "rejected")
    assert await ex.log_types(load_id) == ["load.rejected"]


async def test_the_feed_streams_new_events_and_resumes_without_gap(ex):
    shipper, skey = await ex.participant("shipper")
    load_id, _ = await ex.load_of(skey)
    await ex.emit("market", "load.rested", {"load_id": load_id})
    await ex.until_logged(load_id, 1)
    # Open: the stream waits for what comes, with keep-alive comments, until the load
    # is final. (httpx's ASGI transport hands over the body when the stream ends.)
    ex.deps.config.sse_max_s = 30.0  # ends because the load expires, not by the clock
    try:
        streaming = asyncio.create_task(ex.get(f"/v1/loads/{load_id}/events", skey))
        await asyncio.sleep(0.8)
        hold = {"load_id": load_id, "shipper_id": shipper, "hold_fen": 1, "transfer_id": "t"}
        await ex.emit("settlement", "load.funded", hold, key=shipper)
        await ex.until_logged(load_id, 2)
        await ex.emit("market", "order.expired", {"ref_id": load_id})
        r = await asyncio.wait_for(streaming, 10)
    finally:
        ex.deps.config.sse_max_s = 2.0
    events, comments = sse_events(r.text)
    assert [(e[0], e[1]) for e in events] == [
        (1, "load.rested"),
        (2, "load.funded"),
        (3, "order.expired"),
    ]
    assert comments >= 2, "a first comment and at least one keep-alive"
    for last in range(0, 4):
        again, _ = sse_events(
            (
                await ex.get(
                    f"/v1/loads/{load_id}/events", skey, headers={"Last-Event-ID": str(last)}
                )
            ).text
        )
        assert again == events[last:]
    problem(
        await ex.get(f"/v1/loads/{load_id}/events", skey, headers={"Last-Event-ID": "x"}),
        422, "invalid",
    )  # fmt: skip


async def test_a_stream_of_a_live_load_ends_after_its_maximum_duration(ex):
    _, skey = await ex.participant("shipper")
    load_id, _ = await ex.load_of(skey)
    started = time.monotonic()
    r = await ex.get(f"/v1/loads/{load_id}/events", skey)
    took = time.monotonic() - started
    assert r.status_code == 200 and 1.9 <= took < 6
    assert sse_events(r.text)[0] == []


# ---------------------------------------------------------------------------- shipments


async def test_shipment_actions_check_party_and_state_and_land_on_shipments(ex):
    shipper, skey = await ex.participant("shipper")
    carrier, ckey = await ex.participant("carrier")
    operator, okey = await ex.participant("operator")
    _, other_carrier = await ex.participant("carrier")
    load_id, _ = await ex.load_of(skey)
    deal_id = await ex.deal(load_id, shipper, carrier, price_fen=300_000)
    await ex.until(load_id, skey, "dealt")

    problem(
        await ex.post(f"/v1/deals/{deal_id}/delivered", ckey, {"proof_ref": "P"}),
        409,
        problems.DEAL_STATE,
    )
    problem(
        await ex.post(f"/v1/deals/{deal_id}/decision", okey, {"resolution": "release"}),
        409, problems.DEAL_STATE,
    )  # fmt: skip
    problem(await ex.post(f"/v1/deals/{deal_id}/pickup", skey), 403, problems.FORBIDDEN)
    problem(await ex.post(f"/v1/deals/{deal_id}/pickup", okey), 403, problems.FORBIDDEN)
    problem(await ex.post(f"/v1/deals/{deal_id}/pickup", other_carrier), 404, problems.NOT_FOUND)
    problem(await ex.post("/v1/deals/deal:nope/pickup", ckey), 404, problems.NOT_FOUND)
    problem(
        await ex.post(f"/v1/deals/{deal_id}/dispute", okey, {"reason": "x"}),
        403,
        problems.FORBIDDEN,
    )

    first = await ex.post(f"/v1/deals/{deal_id}/pickup", ckey, idem="pick-1")
    assert first.status_code == 202, first.text
    # A retry gets the first answer, although the deal has moved on since.
    again = await ex.post(f"/v1/deals/{deal_id}/pickup", ckey, idem="pick-1")
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    problem(await ex.post(f"/v1/deals/{deal_id}/pickup", ckey), 409, problems.DEAL_STATE)

    r = await ex.post(f"/v1/deals/{deal_id}/dispute", skey, {"reason": "half the cargo is wet"})
    assert r.status_code == 202, r.text
    assert (await ex.get(f"/v1/loads/{load_id}", skey)).json()["status"] == "disputed"
    problem(
        await ex.post(f"/v1/deals/{deal_id}/dispute", ckey, {"reason": "no"}),
        409,
        problems.DEAL_STATE,
    )
    problem(
        await ex.post(f"/v1/deals/{deal_id}/decision", okey, {"resolution": "split", "carrier_fen": 300_000}),
        422, "invalid",
    )  # fmt: skip
    problem(
        await ex.post(f"/v1/deals/{deal_id}/decision", okey, {"resolution": "refund", "carrier_fen": 5}),
        422, "invalid",
    )  # fmt: skip
    r = await ex.post(
        f"/v1/deals/{deal_id}/decision", okey, {"resolution": "split", "carrier_fen": 200_000}
    )
    assert r.status_code == 202, r.text
    problem(
        await ex.post(f"/v1/deals/{deal_id}/decision", okey, {"resolution": "release"}),
        409, problems.DEAL_STATE,
    )  # fmt: skip

    sent = [e for e in await ex.shipments(until=3) if e["data"]["deal_id"] == deal_id]
    assert [e["type"] for e in sent] == [
        "shipment.picked_up",
        "shipment.disputed",
        "dispute.decided",
    ]
    for e in sent:
        assert e["_key"] == deal_id and e["source"] == "gateway"
        schemas.validate({k: v for k, v in e.items() if k != "_key"})
    picked, disputed, decided = (e["data"] for e in sent)
    assert picked == {"deal_id": deal_id, "load_id": load_id, "carrier_id": carrier}
    assert disputed["participant_id"] == shipper and disputed["reason"] == "half the cargo is wet"
    assert decided == {
        "deal_id": deal_id, "load_id": load_id, "operator_id": operator,
        "resolution": "split", "carrier_fen": 200_000,
    }  # fmt: skip

    await ex.until_logged(load_id, 5)  # rested, deal, picked up, disputed, decided
    deal = (await ex.get(f"/v1/deals/{deal_id}", okey)).json()
    assert deal["status"] == "disputed"
    assert deal["dispute"]["disputed_by"] == shipper and deal["dispute"]["resolution"] == "split"
    await ex.emit(
        "settlement", "escrow.refunded",
        {"deal_id": deal_id, "load_id": load_id, "shipper_id": shipper, "amount_fen": 100_000},
        key=deal_id,
    )  # fmt: skip
    await ex.until(load_id, skey, "refunded")
