"""The gateway's REST core against the real PostgreSQL and broker: loads go to
`commands` exactly once, Idempotency-Key semantics, participants, rate limit."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.common import schemas
from services.gateway import problems
from services.gateway.deps import CommandSink
from tests.integration import test_gateway_support as support
from tests.integration.test_gateway_support import (
    auction_load,
    auth,
    market_load,
    offer,
    problem,
)

gateway = support.gateway  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_posted_load_lands_in_commands_once_as_the_engine_command(gateway):
    shipper, key = await gateway.participant("shipper")
    body = market_load()
    r = await gateway.post("/v1/loads", key, body)
    assert r.status_code == 202, r.text
    accepted = r.json()
    load_id = accepted["load_id"]
    assert r.headers["location"] == f"/v1/loads/{load_id}"
    assert accepted["status"] == "requested"

    [cmd] = await gateway.commands(until=1)
    schemas.validate({k: v for k, v in cmd.items() if k != "_key"})
    assert cmd["type"] == "load.post" and cmd["source"] == "gateway" and cmd["v"] == 1
    assert cmd["id"] == accepted["command_id"]
    assert cmd["key"] == cmd["_key"] == "420100>420600>van-9.6"
    assert cmd["cause"] is None
    data = cmd["data"]
    assert data["load_id"] == load_id and data["shipper_id"] == shipper
    assert data["limit_fen"] == 350_000 and data["mode"] == "market"
    assert "auction" not in data

    got = (await gateway.client.get(r.headers["location"], headers=auth(key))).json()
    assert got["status"] == "requested" and got["shipper_id"] == shipper
    assert got["lane"] == body["lane"] and got["limit_fen"] == 350_000
    assert got["requested_at"] == cmd["ts"]
    assert got["deal"] is None and got["bids"] == [] and got["policy"] is None


async def test_auction_load_carries_its_terms(gateway):
    _, key = await gateway.participant("shipper")
    body = auction_load()
    r = await gateway.post("/v1/loads", key, body)
    assert r.status_code == 202, r.text
    [cmd] = await gateway.commands(until=1)
    assert cmd["data"]["auction"] == body["auction"] and "limit_fen" not in cmd["data"]


async def test_retry_with_the_same_key_replays_the_first_answer_and_sends_nothing(gateway):
    _, key = await gateway.participant("shipper")
    body = market_load()
    first = await gateway.post("/v1/loads", key, body, idem="k-1")
    # Same payload, other key order and spacing: the same request.
    raw = orjson.dumps(dict(reversed(list(body.items()))))
    again = await gateway.client.post(
        "/v1/loads", content=raw, headers=auth(key, '"k-1"') | {"content-type": "application/json"}
    )
    assert first.status_code == again.status_code == 202
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await gateway.commands(until=2, timeout_s=3)) == 1
    assert await gateway.count("load") == 1


async def test_same_key_with_another_payload_is_422(gateway):
    _, key = await gateway.participant("shipper")
    await gateway.post("/v1/loads", key, market_load(), idem="k-2")
    r = await gateway.post("/v1/loads", key, market_load(limit_fen=1), idem="k-2")
    problem(r, 422, problems.IDEMPOTENCY_KEY_REUSED)
    assert await gateway.count("load") == 1


async def test_keys_are_per_participant(gateway):
    _, key_a = await gateway.participant("shipper")
    _, key_b = await gateway.participant("shipper")
    a = await gateway.post("/v1/loads", key_a, market_load(), idem="same")
    b = await gateway.post("/v1/loads", key_b, market_load(), idem="same")
    assert a.status_code == b.status_code == 202
    assert a.json()["load_id"] != b.json()["load_id"]


class HeldSink(CommandSink):
    """The real sink, held before sending until the test lets it go."""

    def __init__(self, inner: CommandSink) -> None:
        super().__init__(inner.producer, inner.topic, inner.timeout_s)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def send(self, value: bytes, key: str) -> None:
        self.entered.set()
        await self.go.wait()
        await super().send(value, key)


async def test_same_key_while_the_first_is_in_flight_is_409_then_replayed(gateway):
    _, key = await gateway.participant("shipper")
    held = HeldSink(gateway.deps.commands)
    gateway.deps.commands = held
    body = market_load()
    first = asyncio.create_task(gateway.post("/v1/loads", key, body, idem="k-3"))
    await asyncio.wait_for(held.entered.wait(), 5)
    r = await gateway.post("/v1/loads", key, body, idem="k-3")
    problem(r, 409, problems.IDEMPOTENCY_KEY_IN_USE)
    assert r.headers["retry-after"] == "1"
    held.go.set()
    done = await asyncio.wait_for(first, 10)
    assert done.status_code == 202
    replay = await gateway.post("/v1/loads", key, body, idem="k-3")
    assert replay.content == done.content
    assert len(await gateway.commands(until=2, timeout_s=3)) == 1


class AckThenFailSink(CommandSink):
    """Sends for real, then fails as if the process died before recording: the broker
    has the command, the gateway's tables do not."""

    def __init__(self, inner: CommandSink) -> None:
        super().__init__(inner.producer, inner.topic, inner.timeout_s)
        self.failures_left = 1

    async def send(self, value: bytes, key: str) -> None:
        await super().send(value, key)
        if self.failures_left:
            self.failures_left -= 1
            raise problems.ProblemError(503, problems.UNAVAILABLE, "simulated crash")


async def test_retry_after_a_failure_resends_the_same_command_never_a_second_load(gateway):
    _, key = await gateway.participant("shipper")
    gateway.deps.commands = AckThenFailSink(gateway.deps.commands)
    body = market_load()
    r1 = await gateway.post("/v1/loads", key, body, idem="k-4")
    problem(r1, 503, problems.UNAVAILABLE)
    assert await gateway.count("load") == 0
    # The failed attempt gave its lease back: the retry takes over at once.
    r2 = await gateway.post("/v1/loads", key, body, idem="k-4")
    assert r2.status_code == 202, r2.text
    sent = await gateway.commands(until=2)
    assert len(sent) == 2
    # The same command twice (same id, same load id, same bytes): one load, deduplicable.
    assert sent[0] == sent[1]
    assert sent[0]["id"] == r2.json()["command_id"]
    assert sent[0]["data"]["load_id"] == r2.json()["load_id"]
    assert await gateway.count("load") == 1
    r3 = await gateway.post("/v1/loads", key, body, idem="k-4")
    assert r3.content == r2.content


async def test_a_crashed_attempt_frees_its_key_when_the_lease_runs_out(gateway):
    from services.common.envelope import encode, new_id
    from services.gateway import commands, idempotency
    from services.gateway.loads import LOAD_REQUEST
    from services.gateway.reference import tables

    shipper, key = await gateway.participant("shipper")
    body = market_load()
    # An attempt claims the key with its command, and dies before sending it.
    req = LOAD_REQUEST.validate_python(body, strict=True)
    ts = gateway.deps.clock_ms()
    commands.check_load(req, tables(), ts)
    crashed = commands.load_post(req, new_id(ts), shipper, ts)
    fp = idempotency.fingerprint("POST", "/v1/loads", body)
    claimed = await gateway.deps.idempotency.begin(shipper, "k-5", fp, encode(crashed))
    assert isinstance(claimed, idempotency.Attempt)
    problem(await gateway.post("/v1/loads", key, body, idem="k-5"), 409, "idempotency_key_in_use")
    # The lease runs out (as if idempotency_lease_s passed).
    await gateway.deps.pool.execute(
        "UPDATE idempotency_key SET lease_until = now() - interval '1 s'"
    )
    r = await gateway.post("/v1/loads", key, body, idem="k-5")
    assert r.status_code == 202, r.text
    # The retry sent the crashed attempt's command, ids and timestamp included.
    assert r.json() == {
        "status": "requested",
        "command_id": crashed["id"],
        "load_id": crashed["data"]["load_id"],
    }
    [sent] = await gateway.commands(until=1)
    assert sent["id"] == crashed["id"] and sent["ts"] == crashed["ts"]
    attempt = await gateway.deps.pool.fetchval("SELECT attempt FROM idempotency_key")
    assert attempt == 2


async def test_missing_or_bad_idempotency_key_is_400_and_sends_nothing(gateway):
    _, key = await gateway.participant("shipper")
    problem(
        await gateway.post("/v1/loads", key, market_load(), idem=None),
        400,
        "idempotency_key_missing",
    )
    problem(
        await gateway.post("/v1/loads", key, market_load(), idem="a b"),
        400,
        "idempotency_key_invalid",
    )
    problem(
        await gateway.post("/v1/loads", key, market_load(), idem="x" * 256),
        400,
        "idempotency_key_invalid",
    )
    assert await gateway.commands(until=1, timeout_s=1) == []


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (market_load(lane={"origin": "420100", "destination": "999999", "vehicle_class": "van-9.6"}), 422, "unknown_region"),
        (market_load(weight_kg=18_001), 422, "over_capacity"),
        (market_load(volume_dm3=58_001), 422, "over_capacity"),
        (market_load(pickup_from=2_000_000_000_000, pickup_to=1_999_999_999_999), 422, "invalid"),
        (market_load(pickup_from=1_000, pickup_to=2_000, deliver_by=None), 422, "expired"),
        (auction_load(auction={"closes_at": 1_000, "reserve_fen": None, "instant_fen": None, "sealed": True}), 422, "expired"),
        (auction_load(auction={"closes_at": 4_000_000_000_000, "reserve_fen": 5, "instant_fen": None, "sealed": True}), 422, "invalid"),
        (auction_load(auction={"closes_at": 1_900_000_000_000, "reserve_fen": 5, "instant_fen": 6, "sealed": True}), 422, "invalid"),
        (market_load(limit_fen=0), 422, "invalid"),
        (market_load(mode="barter"), 422, "invalid"),
        (market_load(auction={"closes_at": 1}), 422, "invalid"),
    ],
    ids=["unknown-region", "too-heavy", "too-bulky", "inverted-window", "pickup-past",
         "closes-past", "closes-after-pickup", "instant-above-reserve", "zero-limit",
         "unknown-mode", "market-with-auction"],
)  # fmt: skip
async def test_loads_that_cannot_trade_are_refused_with_the_engine_words(
    gateway, body, status, reason
):
    _, key = await gateway.participant("shipper")
    problem(await gateway.post("/v1/loads", key, body), status, reason)
    assert await gateway.count("load") == 0
    assert await gateway.count("idempotency_key") == 0


async def test_list_loads_pages_newest_first_and_filters(gateway):
    _, key = await gateway.participant("shipper")
    ids = []
    for i in range(5):
        lane = {"origin": "420100", "destination": "420500" if i % 2 else "420600",
                "vehicle_class": "van-9.6"}  # fmt: skip
        ids.append((await gateway.post("/v1/loads", key, market_load(lane=lane))).json()["load_id"])
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await gateway.client.get("/v1/loads", params=params, headers=auth(key))).json()
        seen += [item["load_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    yichang = await gateway.client.get(
        "/v1/loads", params={"destination": "420500", "status": "requested"}, headers=auth(key)
    )
    assert [i["load_id"] for i in yichang.json()["items"]] == [ids[3], ids[1]]
    none = await gateway.client.get("/v1/loads", params={"status": "dealt"}, headers=auth(key))
    assert none.json() == {"items": [], "next_cursor": None}
    problem(
        await gateway.client.get("/v1/loads", params={"cursor": "%%%"}, headers=auth(key)),
        422,
        "invalid",
    )


async def test_cancel_sends_load_cancel_on_the_loads_lane(gateway):
    shipper, key = await gateway.participant("shipper")
    load_id = (await gateway.post("/v1/loads", key, market_load())).json()["load_id"]
    r = await gateway.post(f"/v1/loads/{load_id}/cancel", key, idem="c-1")
    assert r.status_code == 202, r.text
    again = await gateway.post(f"/v1/loads/{load_id}/cancel", key, idem="c-1")
    assert again.content == r.content
    post, cancel = await gateway.commands(until=2)
    assert cancel["type"] == "load.cancel" and cancel["key"] == post["key"]
    assert cancel["data"] == {"load_id": load_id, "shipper_id": shipper}
    got = (await gateway.client.get(f"/v1/loads/{load_id}", headers=auth(key))).json()
    assert got["cancel_requested_at"] == cancel["ts"] == r.json()["cancel_requested_at"]


async def test_carrier_offers_and_cancels(gateway):
    carrier, key = await gateway.participant("carrier")
    r = await gateway.post("/v1/offers", key, offer())
    assert r.status_code == 202, r.text
    offer_id = r.json()["offer_id"]
    assert (await gateway.post(f"/v1/offers/{offer_id}/cancel", key)).status_code == 202
    posted, cancelled = await gateway.commands(until=2)
    schemas.validate({k: v for k, v in posted.items() if k != "_key"})
    assert posted["type"] == "offer.post" and posted["data"]["carrier_id"] == carrier
    assert cancelled["type"] == "offer.cancel" and cancelled["key"] == posted["key"]
    got = (await gateway.client.get(f"/v1/offers/{offer_id}", headers=auth(key))).json()
    assert got["status"] == "requested" and got["cancel_requested_at"] == cancelled["ts"]
    problem(await gateway.post("/v1/offers", key, offer(capacity_kg=18_001)), 422, "over_capacity")


async def test_operator_registers_lists_and_suspends_participants(gateway):
    _, ops = await gateway.participant("operator")
    r = await gateway.post(
        "/v1/participants", ops, {"role": "shipper", "name": "荆楚建材"}, idem="p-1"
    )
    assert r.status_code == 201, r.text
    created = r.json()
    shipper_key = created["api_key"]
    pid = created["participant"]["participant_id"]
    assert r.headers["location"] == f"/v1/participants/{pid}"
    me = await gateway.client.get("/v1/me", headers=auth(shipper_key))
    assert me.json() == created["participant"] | {"status": "active"}
    # The replay is the same participant, without the key (never stored in the clear).
    replay = await gateway.post(
        "/v1/participants", ops, {"role": "shipper", "name": "荆楚建材"}, idem="p-1"
    )
    assert replay.status_code == 201
    assert replay.json() == {"participant": created["participant"], "api_key": None}
    assert await gateway.count("participant") == 2
    stored = await gateway.deps.pool.fetchval(
        "SELECT body FROM idempotency_key WHERE idem_key = 'p-1'"
    )
    assert shipper_key.encode() not in stored

    listed = await gateway.client.get(
        "/v1/participants", params={"role": "shipper"}, headers=auth(ops)
    )
    assert [p["participant_id"] for p in listed.json()["items"]] == [pid]

    s = await gateway.post(f"/v1/participants/{pid}/suspend", ops)
    assert s.status_code == 200 and s.json()["status"] == "suspended"
    problem(await gateway.client.get("/v1/me", headers=auth(shipper_key)), 401, "unauthenticated")
    problem(await gateway.post("/v1/participants/nobody/suspend", ops), 404, "not_found")


async def test_rate_limit_answers_429_with_retry_after_per_key(gateway):
    from services.gateway.ratelimit import RateLimiter

    gateway.deps.limiter = RateLimiter(rate_per_s=0.5, burst=2, keys_max=10)
    _, key = await gateway.participant("shipper")
    _, other = await gateway.participant("shipper")
    for _ in range(2):
        assert (await gateway.client.get("/v1/loads", headers=auth(key))).status_code == 200
    r = await gateway.client.get("/v1/loads", headers=auth(key))
    problem(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "2"
    assert (await gateway.client.get("/v1/loads", headers=auth(other))).status_code == 200


async def test_reference_serves_the_shipped_tables(gateway):
    r = await gateway.client.get("/v1/reference")
    assert r.status_code == 200
    doc = r.json()
    hubei = {x["code"] for x in doc["regions"] if x["province"] == "Hubei"}
    assert len(hubei) == 17 and {"420100", "429021"} <= hubei
    assert len(doc["vehicle_classes"]) == 35


async def test_expired_keys_are_swept_and_then_new_again(gateway):
    _, key = await gateway.participant("shipper")
    first = await gateway.post("/v1/loads", key, market_load(), idem="old")
    await gateway.deps.pool.execute(
        "UPDATE idempotency_key SET expires_at = now() - interval '1 s'"
    )
    # Past its TTL the key is new again: another payload is a new load, not a 422.
    second = await gateway.post("/v1/loads", key, market_load(limit_fen=1000), idem="old")
    assert second.status_code == 202 and second.json()["load_id"] != first.json()["load_id"]
    await gateway.deps.pool.execute(
        "UPDATE idempotency_key SET expires_at = now() - interval '1 s'"
    )
    assert await gateway.deps.idempotency.sweep() == 1
    assert await gateway.count("idempotency_key") == 0
