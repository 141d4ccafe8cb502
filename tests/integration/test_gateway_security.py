"""Security of the gateway: who may do what, and bodies that must change nothing."""

from __future__ import annotations

import orjson
import pytest

from tests.integration import test_gateway_support as support
from tests.integration.test_gateway_support import (
    auth,
    market_load,
    offer,
    problem,
)

gateway = support.gateway  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def assert_nothing_changed(gateway, loads: int = 0, commands: int = 0) -> None:
    assert await gateway.count("load") == loads
    assert await gateway.count("offer") == 0
    sent = await gateway.commands(until=commands + 1, timeout_s=1)
    assert len(sent) == commands


async def test_a_shipper_cannot_read_list_or_cancel_another_shippers_load(gateway):
    _, owner = await gateway.participant("shipper")
    _, other = await gateway.participant("shipper")
    load_id = (await gateway.post("/v1/loads", owner, market_load())).json()["load_id"]
    # Answered exactly as for a load that does not exist: ids are not disclosed.
    theirs = problem(
        await gateway.client.get(f"/v1/loads/{load_id}", headers=auth(other)), 404, "unknown_order"
    )
    missing = problem(
        await gateway.client.get("/v1/loads/nope", headers=auth(other)), 404, "unknown_order"
    )
    assert theirs["title"] == missing["title"]
    problem(await gateway.post(f"/v1/loads/{load_id}/cancel", other), 404, "unknown_order")
    listed = await gateway.client.get("/v1/loads", headers=auth(other))
    assert listed.json()["items"] == []
    await assert_nothing_changed(gateway, loads=1, commands=1)


async def test_wrong_missing_and_suspended_keys_get_401(gateway):
    pid, key = await gateway.participant("shipper")
    _, ops = await gateway.participant("operator")
    key_id = key.split("_")[1]
    wrong_secret = f"wlx_{key_id}_{'A' * 43}"
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {key}"},
        {"Authorization": "Bearer wlx_notakey"},
        {"Authorization": f"Bearer {wrong_secret}"},
        {"Authorization": f"Bearer {key}x"},
    ):
        r = await gateway.client.post(
            "/v1/loads", json=market_load(), headers=headers | {"Idempotency-Key": "s-1"}
        )
        problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await gateway.client.get("/v1/loads", headers=auth(key))).status_code == 200
    assert (await gateway.post(f"/v1/participants/{pid}/suspend", ops)).status_code == 200
    problem(await gateway.post("/v1/loads", key, market_load()), 401, "unauthenticated")
    problem(await gateway.client.get("/v1/loads", headers=auth(key)), 401, "unauthenticated")
    await assert_nothing_changed(gateway)


async def test_roles_are_kept_apart_with_403(gateway):
    _, shipper = await gateway.participant("shipper")
    _, carrier = await gateway.participant("carrier")
    _, insurer = await gateway.participant("insurer")
    problem(await gateway.post("/v1/offers", shipper, offer()), 403, "forbidden")
    problem(await gateway.post("/v1/loads", carrier, market_load()), 403, "forbidden")
    problem(await gateway.post("/v1/loads", insurer, market_load()), 403, "forbidden")
    problem(await gateway.client.get("/v1/loads", headers=auth(carrier)), 403, "forbidden")
    problem(
        await gateway.post("/v1/participants", shipper, {"role": "operator", "name": "me"}),
        403,
        "forbidden",
    )
    problem(await gateway.client.get("/v1/participants", headers=auth(carrier)), 403, "forbidden")
    await assert_nothing_changed(gateway)
    assert await gateway.count("participant") == 3


def _deep(n: int) -> bytes:
    return b'{"lane": ' + b"[" * n + b"]" * n + b"}"


HOSTILE: list[tuple[str, bytes, int, str]] = [
    ("deep-json", _deep(5000), 400, "malformed"),
    ("deep-json-under-orjson-limit", _deep(500), 400, "malformed"),
    ("not-json", b"{'mode': 'market'}", 400, "malformed"),
    ("truncated", orjson.dumps(market_load())[:-5], 400, "malformed"),
    ("nan", orjson.dumps(market_load()).replace(b"350000", b"NaN"), 400, "malformed"),
    ("top-level-array", b"[]", 422, "invalid"),
    ("huge-int", orjson.dumps(market_load()).replace(b"350000", b"9" * 30), 422, "invalid"),
    ("400-digit-int", orjson.dumps(market_load()).replace(b"350000", b"9" * 400), 400, "malformed"),
    ("int-above-u64", orjson.dumps(market_load()).replace(b"350000", b"18446744073709551616"), 422, "invalid"),
    ("above-fen-max", orjson.dumps(market_load(limit_fen=10**13)), 422, "invalid"),
    ("negative-weight", orjson.dumps(market_load(weight_kg=-1)), 422, "invalid"),
    ("float-for-int", orjson.dumps(market_load()).replace(b"350000", b"350000.0"), 422, "invalid"),
    ("string-for-int", orjson.dumps(market_load(limit_fen="350000")), 422, "invalid"),
    ("bool-for-int", orjson.dumps(market_load(limit_fen=True)), 422, "invalid"),
    ("extra-field", orjson.dumps(market_load(shipper_id="someone-else")), 422, "invalid"),
    ("load-id-chosen", orjson.dumps(market_load(load_id="mine")), 422, "invalid"),
    ("sql-in-region", orjson.dumps(market_load(lane={"origin": "420100'; DROP TABLE load; --", "destination": "420600", "vehicle_class": "van-9.6"})), 422, "invalid"),
    ("sql-in-category", orjson.dumps(market_load(cargo_category="x'); DELETE FROM load; --")), 422, "invalid"),
    ("control-chars", orjson.dumps(market_load(cargo_category="a\u0000b")), 422, "invalid"),
    ("script-in-class", orjson.dumps(market_load(lane={"origin": "420100", "destination": "420600", "vehicle_class": "<script>alert(1)</script>"})), 422, "invalid"),
    ("oversized", orjson.dumps(market_load(cargo_category="x" * 20_000)), 413, "payload_too_large"),
    ("empty", b"", 400, "malformed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_hostile_bodies_get_4xx_and_change_nothing(gateway, body, status, reason):
    _, key = await gateway.participant("shipper")
    headers = auth(key, "h-1") | {"content-type": "application/json"}
    r = await gateway.client.post("/v1/loads", content=body, headers=headers)
    problem(r, status, reason)
    await assert_nothing_changed(gateway)
    assert await gateway.count("idempotency_key") == 0
    # The key was not spent: the same key with a good body still works.
    ok = await gateway.post("/v1/loads", key, market_load(), idem="h-1")
    assert ok.status_code == 202


async def test_wrong_media_type_and_lying_content_length(gateway):
    _, key = await gateway.participant("shipper")
    r = await gateway.client.post(
        "/v1/loads", content=orjson.dumps(market_load()),
        headers=auth(key, "m-1") | {"content-type": "text/plain"},
    )  # fmt: skip
    problem(r, 415, "unsupported_media_type")
    r = await gateway.client.post(
        "/v1/loads", content=orjson.dumps(market_load()),
        headers=auth(key, "m-1") | {"content-type": "application/json", "content-length": "99999999"},
    )  # fmt: skip
    problem(r, 413, "payload_too_large")
    await assert_nothing_changed(gateway)


async def test_injection_in_path_query_and_names_is_inert(gateway):
    _, ops = await gateway.participant("operator")
    _, key = await gateway.participant("shipper")
    for path in ("/v1/loads/' OR '1'='1", "/v1/loads/%00", "/v1/loads/" + "x" * 129):
        r = await gateway.client.get(path, headers=auth(key))
        assert r.status_code in (404, 422), (path, r.status_code)
    r = await gateway.client.get("/v1/loads", params={"origin": "1' OR 1=1 --"}, headers=auth(key))
    problem(r, 422, "invalid")
    name = "Robert'); DROP TABLE participant; --"
    r = await gateway.post("/v1/participants", ops, {"role": "carrier", "name": name})
    assert r.status_code == 201 and r.json()["participant"]["name"] == name
    assert await gateway.count("participant") == 3
    await assert_nothing_changed(gateway)


async def test_money_is_each_participants_own(gateway):
    _, carrier = await gateway.participant("carrier")
    _, other = await gateway.participant("carrier")
    _, operator = await gateway.participant("operator")
    r = await gateway.post("/v1/withdrawals", carrier, {"amount_fen": 5_000, "bank_ref": "W-1"})
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]
    [cmd] = await gateway.commands(until=1)
    # The command names the caller, whatever the body tries: the body has no such field.
    assert cmd["type"] == "funds.withdraw" and cmd["key"] == cmd["data"]["participant_id"]
    theirs = await gateway.client.get(f"/v1/money/{request_id}", headers=auth(other))
    problem(theirs, 404, "not_found")
    smuggled = {"amount_fen": 5_000, "bank_ref": "W-2", "participant_id": "someone-else"}
    problem(await gateway.post("/v1/withdrawals", carrier, smuggled), 422, "invalid")
    # Operators move no money of their own; nobody moves a negative or fractional amount.
    problem(await gateway.post("/v1/deposits", operator, {"amount_fen": 1, "bank_ref": "x"}),
            403, "forbidden")  # fmt: skip
    for amount in (-5, 0, 10.5, "100", 10**13):
        bad = {"amount_fen": amount, "bank_ref": "x"}
        problem(await gateway.post("/v1/deposits", carrier, bad), 422, "invalid")
    assert len(await gateway.commands(until=2, timeout_s=1)) == 1
