"""WebSocket /v1/stream against `python -m services.gateway`, the real broker and
PostgreSQL: authentication by header and by subprotocol, refusals by close code, the
subscription filter, private events, bids placed once however often resent, and
resumes by cursor (from the ring and from Kafka) with no gap and no duplicate, also
through the SDK's reconnect. Market events are produced straight into `market`, as the
engine would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.common.envelope import decode, make
from services.common.kafka import make_producer, produce_batch
from services.common.topics import create_topics
from services.devenv.ports import free_port_block
from services.sdk import CarrierClient, CommandError
from tests.integration.kafka_helpers import read_committed
from tests.integration.test_gateway_live import ROOT, _cli, _drop_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LANE = "420100>420600>van-9.6"
OTHER = "420500>420100>flatbed-13"
HOUR_MS = 3_600_000
RING = 4  # per partition: a resume of more than a few events reads Kafka


class Stack:
    def __init__(self, url, env, prefix, keys, ids):
        self.url, self.env, self.prefix, self.keys, self.ids = url, env, prefix, keys, ids
        self.ws = url.replace("http://", "ws://") + "/v1/stream"


@pytest.fixture(scope="module")
def gw(kafka_bootstrap, database_url, tmp_path_factory):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_topics(kafka_bootstrap, prefix, partitions=2))
    port = free_port_block(1)
    env = dict(
        os.environ,
        WLEX_KAFKA_BOOTSTRAP=kafka_bootstrap,
        WLEX_DATABASE_URL=database_url,
        WLEX_TOPIC_PREFIX=prefix,
        WLEX_HTTP_PORT=str(port),
        WLEX_GATEWAY_DB_SCHEMA=schema,
        WLEX_GATEWAY_STREAM_RING_PER_PARTITION=str(RING),
        WLEX_GATEWAY_STREAM_CURSOR_EVERY_S="0.5",
    )
    keys, ids = {}, {}
    for name, role in (("shipper", "shipper"), ("a", "carrier"), ("b", "carrier"),
                       ("suspended", "carrier")):  # fmt: skip
        made = orjson.loads(_cli(env, "create", "--role", role, "--name", f"stream {name}",
                                 "--json"))  # fmt: skip
        keys[name] = made["api_key"]
        ids[name] = made["participant"]["participant_id"]
    _cli(env, "suspend", ids["suspended"])
    log = (tmp_path_factory.mktemp("gateway") / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited {proc.returncode}; see {log.name}"
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway not healthy within 60 s"
            time.sleep(0.2)
        yield Stack(url, env, prefix, keys, ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        _drop_schema(database_url, schema)
    assert code == 0, f"gateway exited {code} on SIGTERM; see {log.name}"


# ---------------------------------------------------------------------------- helpers


def _ws(gw: Stack, who: str, **kwargs):
    return connect(gw.ws, additional_headers={"Authorization": f"Bearer {gw.keys[who]}"},
                   proxy=None, compression=None, **kwargs)  # fmt: skip


async def _subscribe(ws, **fields) -> dict:
    await ws.send(orjson.dumps({"op": "subscribe", **fields}).decode())
    return await _next(ws, "subscribed")


async def _next(ws, kind: str, timeout_s: float = 15.0) -> dict:
    """The next frame of that type (others, e.g. cursor frames, are skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def _events_until(ws, last_id: str, timeout_s: float = 20.0) -> list[dict]:
    """Every event frame up to and including the one whose event id is last_id."""
    got = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "event":
                got.append(frame)
                if frame["event"]["id"] == last_id:
                    return got


def _rested(lane: str = LANE, load_id: str | None = None) -> dict:
    return make("load.rested", {"load_id": load_id or uuid.uuid4().hex}, lane, "matching",
                int(time.time() * 1000))  # fmt: skip


async def _produce(gw: Stack, events: list[dict]) -> None:
    producer = make_producer(gw.env["WLEX_KAFKA_BOOTSTRAP"])
    await producer.start()
    try:
        await produce_batch(producer, [(gw.prefix + "market", e["key"], e) for e in events])
    finally:
        await producer.stop()


def _post_auction(gw: Stack, sealed: bool = False) -> str:
    now = int(time.time() * 1000)
    body = {
        "mode": "auction",
        "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
        "weight_kg": 8000, "volume_dm3": 20000, "cargo_category": "general",
        "pickup_from": now + HOUR_MS, "pickup_to": now + 5 * HOUR_MS,
        "auction": {"closes_at": now + HOUR_MS, "reserve_fen": 400000, "instant_fen": None,
                    "sealed": sealed},
    }  # fmt: skip
    r = httpx.post(gw.url + "/v1/loads", json=body, timeout=10, headers={
        "Authorization": f"Bearer {gw.keys['shipper']}", "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
    assert r.status_code == 202, r.text
    return r.json()["load_id"]


# ---------------------------------------------------------------------------- tests


async def test_auth_by_header_and_by_browser_subprotocol(gw):
    async with _ws(gw, "a") as ws:
        sub = await _subscribe(ws)
        assert sub["cursor"]
    async with connect(gw.ws, subprotocols=["wlex.v1", f"bearer.{gw.keys['a']}"],
                       proxy=None) as ws:  # fmt: skip
        assert ws.subprotocol == "wlex.v1"  # echoed; the key never is
        assert (await _subscribe(ws))["cursor"]


@pytest.mark.parametrize(
    "who, code",
    [("none", 4401), ("wrong", 4401), ("suspended", 4401), ("shipper", 4403)],
)
async def test_refused_keys_are_closed_with_a_readable_code(gw, who, code):
    headers = {
        "none": {},
        "wrong": {"Authorization": "Bearer wlx_0123456789abcdef_" + "A" * 43},
        "suspended": {"Authorization": f"Bearer {gw.keys.get('suspended')}"},
        "shipper": {"Authorization": f"Bearer {gw.keys.get('shipper')}"},
    }[who]
    async with connect(gw.ws, additional_headers=headers, proxy=None) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == code


async def test_subscription_filter_delivers_only_matching_lanes(gw):
    async with _ws(gw, "a") as ws:
        await _subscribe(ws, lanes=[LANE])
        other, mine, last = _rested(OTHER), _rested(LANE), _rested(LANE)
        await _produce(gw, [other, mine, _rested(OTHER), last])
        got = await _events_until(ws, last["id"])
        assert [f["event"]["id"] for f in got] == [mine["id"], last["id"]]
        # A change of filter applies to what follows.
        await _subscribe(ws, regions=["420500"])
        other2, last2 = _rested(OTHER), _rested(OTHER)
        await _produce(gw, [_rested(LANE), other2, last2])
        got = await _events_until(ws, last2["id"])
        assert [f["event"]["id"] for f in got] == [other2["id"], last2["id"]]


async def test_a_carrier_sees_its_own_deal_and_not_another_carriers(gw):
    load_id = _post_auction(gw)
    lane = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
    deal = make("deal.made", {"deal_id": f"deal:{load_id}", "load_id": load_id, "offer_id": None,
                              "bid_id": "b1", "shipper_id": gw.ids["shipper"],
                              "carrier_id": gw.ids["a"], "price_fen": 300000, "lane": lane},
                LANE, "matching", int(time.time() * 1000))  # fmt: skip
    async with _ws(gw, "a") as wa, _ws(gw, "b") as wb:
        await _subscribe(wa, lanes=[OTHER])  # its own events reach it whatever the filter
        await _subscribe(wb)
        marker = _rested(LANE)
        await _produce(gw, [deal, marker, _rested(OTHER)])
        got_a = await _events_until(wa, deal["id"])
        assert got_a[-1]["event"]["data"]["carrier_id"] == gw.ids["a"]
        got_b = await _events_until(wb, marker["id"])
        assert [f["event"]["type"] for f in got_b] == ["load.rested"]


async def test_open_auction_shows_load_fields_and_anonymous_best_bid(gw):
    load_id = _post_auction(gw)
    now = int(time.time() * 1000)
    opened = make("auction.opened", {"load_id": load_id, "closes_at": now + HOUR_MS,
                                     "sealed": False}, LANE, "matching", now)  # fmt: skip
    accepted = make("bid.accepted", {"bid_id": "bx", "load_id": load_id, "carrier_id": gw.ids["a"],
                                     "price_fen": 350000, "best_fen": 350000}, LANE, "matching", now)  # fmt: skip
    async with _ws(gw, "a") as wa, _ws(gw, "b") as wb:
        await _subscribe(wa, lanes=[LANE])
        await _subscribe(wb, lanes=[LANE])
        await _produce(gw, [opened, accepted])
        got_b = await _events_until(wb, accepted["id"])
        got_a = await _events_until(wa, accepted["id"])
    load = got_b[0]["load"]
    assert load["weight_kg"] == 8000 and load["auction"]["sealed"] is False
    assert "reserve_fen" not in load["auction"] and "shipper_id" not in load
    assert got_b[1]["event"]["data"] == {"load_id": load_id, "best_fen": 350000}
    assert got_a[1]["event"]["data"]["carrier_id"] == gw.ids["a"]


async def test_a_bid_resent_with_its_client_ref_lands_in_commands_once(gw):
    load_id = _post_auction(gw)
    frame = {"op": "bid", "client_ref": f"r-{uuid.uuid4().hex}", "load_id": load_id,
             "price_fen": 300000}  # fmt: skip
    async with _ws(gw, "a") as ws:
        await ws.send(orjson.dumps(frame).decode())
        first = await _next(ws, "ack")
    async with _ws(gw, "a") as ws:  # a reconnect, then the same frame again
        await ws.send(orjson.dumps({**frame, "price_fen": 300000}).decode())
        again = await _next(ws, "ack")
        await ws.send(orjson.dumps({**frame, "price_fen": 290000}).decode())
        reused = await _next(ws, "error")
        await ws.send(orjson.dumps({**frame, "client_ref": "u1", "load_id": "nope"}).decode())
        unknown = await _next(ws, "error")
    assert first["replayed"] is False and again["replayed"] is True
    assert again["result"] == first["result"] and first["result"]["load_id"] == load_id
    assert reused["problem"]["reason"] == "idempotency_key_reused"
    assert unknown["problem"]["reason"] == "unknown_order" and unknown["client_ref"] == "u1"
    records = await read_committed(gw.env["WLEX_KAFKA_BOOTSTRAP"], gw.prefix + "commands",
                                   until=10**6, timeout_s=3)  # fmt: skip
    bids = [decode(r.value) for r in records]
    bids = [e for e in bids if e["type"] == "bid.place" and e["data"]["load_id"] == load_id]
    assert len(bids) == 1
    assert bids[0]["data"] == {"bid_id": first["result"]["bid_id"], "load_id": load_id,
                               "carrier_id": gw.ids["a"], "price_fen": 300000}  # fmt: skip
    assert bids[0]["key"] == LANE  # the load's lane: the auction's partition


async def _resume_gets_exactly_the_missed(gw: Stack, missed_count: int) -> None:
    lanes = [LANE, OTHER, "420100>420500>van-9.6", "420600>420100>van-9.6"]
    async with _ws(gw, "a") as ws:
        await _subscribe(ws)
        first = _rested(LANE)
        await _produce(gw, [first])
        cursor = (await _events_until(ws, first["id"]))[-1]["cursor"]
    missed = [_rested(lanes[i % len(lanes)]) for i in range(missed_count)]
    async with _ws(gw, "b") as watcher:
        # Once another connection has them, the hub is past them: the resume below
        # must replay them (ring or Kafka), not merely receive them live.
        await _subscribe(watcher)
        await _produce(gw, missed)
        await _events_until(watcher, missed[-1]["id"])
    async with _ws(gw, "a") as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "cursor": cursor}).decode())
        frames = []
        async with asyncio.timeout(20):
            while True:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "subscribed":
                    break
                if frame["type"] == "event":
                    frames.append(frame)
        after = _rested(LANE)
        await _produce(gw, [after])
        live = await _events_until(ws, after["id"])
    got = [f["event"]["id"] for f in frames]
    assert sorted(got) == sorted(e["id"] for e in missed)  # no gap, no duplicate
    assert len(set(got)) == len(got)
    by_lane = {lane: [e["id"] for e in missed if e["key"] == lane] for lane in lanes}
    for lane, ids in by_lane.items():  # each lane (one partition) in log order
        assert [f["event"]["id"] for f in frames if f["event"]["key"] == lane] == ids
    assert [f["event"]["id"] for f in live] == [after["id"]]


async def _resumes(gw: Stack) -> dict[str, float]:
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(gw.url + "/metrics", timeout=5)).text
    out = {}
    for line in text.splitlines():
        if line.startswith("wlex_gateway_stream_resumes_total{"):
            out[line.split('"')[1]] = float(line.split()[-1])
    return out


async def test_resume_from_the_ring_gets_exactly_the_missed_events(gw):
    before = await _resumes(gw)
    await _resume_gets_exactly_the_missed(gw, 3)
    assert (await _resumes(gw)).get("ring", 0) == before.get("ring", 0) + 1


async def test_resume_older_than_the_ring_reads_kafka_without_gap_or_duplicate(gw):
    before = await _resumes(gw)
    await _resume_gets_exactly_the_missed(gw, 10 * RING)
    assert (await _resumes(gw)).get("kafka", 0) == before.get("kafka", 0) + 1


async def test_bad_cursor_is_refused_with_the_api_word(gw):
    async with _ws(gw, "a") as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "cursor": "nope"}).decode())
        error = await _next(ws, "error")
        assert error["op"] == "subscribe" and error["problem"]["reason"] == "invalid"
        await ws.send(b"\x00".decode() + "x")
        assert (await _next(ws, "error"))["problem"]["reason"] == "malformed"


async def test_sdk_reconnects_and_resumes_without_gap_or_duplicate(gw):
    client = CarrierClient(gw.url, gw.keys["b"], lanes=[LANE, OTHER])
    await client.connect()
    try:
        before = [_rested(LANE if i % 2 else OTHER) for i in range(5)]
        await _produce(gw, before)
        seen: list[str] = []
        events = client.events()
        async with asyncio.timeout(20):
            while len(seen) < len(before):
                seen.append((await anext(events))["event"]["id"])
        await client._ws.close()  # the connection drops under the client
        during = [_rested(LANE if i % 2 else OTHER) for i in range(3 * RING * 2)]
        await _produce(gw, during)
        await asyncio.sleep(0.5)
        after = [_rested(LANE) for _ in range(3)]
        await _produce(gw, after)
        expected = [e["id"] for e in before + during + after]
        async with asyncio.timeout(30):
            while len(seen) < len(expected):
                seen.append((await anext(events))["event"]["id"])
        assert client.reconnects >= 1
        assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen)
        # A bid over the SDK: acked, and an unknown load is a CommandError.
        ack = await client.bid(_post_auction(gw), 310000)
        assert ack["bid_id"] and ack["status"] == "requested"
        with pytest.raises(CommandError) as err:
            await client.bid("no-such-load", 310000)
        assert err.value.reason == "unknown_order"
    finally:
        await client.close()
