"""The loop the exchange exists for, end to end through every service over the real
broker and PostgreSQL: deposit, post, fund, match, deal, pick up, deliver, settle; an
unfunded load refused; an auction won on the carrier's stream, disputed and split by an
operator; withdrawals; and `wlex ledger check` clean afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.sdk.carrier import CarrierClient
from tests.integration.test_gateway_support import market_load, now_ms, offer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FEE_BPS = 200  # SettlementSettings.fee_bps: 2 %, at least 5 yuan


async def until(fetch, done, timeout_s: float = 60.0, what: str = "condition"):
    """fetch() until done(result); the last result, or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await fetch()
        if done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s} s; last: {got}")
        await asyncio.sleep(0.2)


async def post(client, path: str, body=None):
    r = await client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code in (200, 201, 202), (path, r.status_code, r.text)
    return r.json()


async def get(client, path: str) -> dict:
    r = await client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


async def deposit(client, amount_fen: int, bank_ref: str | None = None) -> dict:
    """POST /v1/deposits (a new Idempotency-Key each time); the request once decided."""
    bank_ref = bank_ref or uuid.uuid4().hex
    req = await post(client, "/v1/deposits", {"amount_fen": amount_fen, "bank_ref": bank_ref})
    return await until(lambda: get(client, f"/v1/money/{req['request_id']}"),
                       lambda m: m["status"] != "requested", what="deposit")  # fmt: skip


async def load_status(client, load_id: str, *statuses: str, timeout_s: float = 60.0) -> dict:
    return await until(lambda: get(client, f"/v1/loads/{load_id}"),
                       lambda load: load["status"] in statuses, timeout_s,
                       what=f"load {load_id} {statuses}")  # fmt: skip


def ledger_check(exchange) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from services.cli import app; app()", "ledger", "check",
         "--database-url", exchange.database_url, "--schema", exchange.settlement_schema],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def audit_clean(exchange, rounds_min: int = 1) -> None:
    """The running settlement service's own invariant audit: it has run, seen every
    invariant hold in every round (rounds ran while the test traded), and exports each
    invariant's gauge at 0."""
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        text = (await client.get(exchange.settlement_url + "/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
    rounds = {outcome: samples.get(("wlex_settlement_invariant_checks_total",
                                    (("outcome", outcome),)), 0.0)
              for outcome in ("ok", "broken", "error")}  # fmt: skip
    assert rounds["ok"] >= rounds_min and rounds["broken"] == rounds["error"] == 0, rounds
    gauge = {dict(labels)["invariant"]: v for (name, labels), v in samples.items()
             if name == "wlex_settlement_invariant_violations"}  # fmt: skip
    assert len(gauge) == 7 and not any(gauge.values()), gauge


async def test_post_fund_match_deal_deliver_settle(exchange):
    _, shipper_key = await exchange.participant("shipper")
    carrier_id, carrier_key = await exchange.participant("carrier")
    shipper, carrier = exchange.client(shipper_key), exchange.client(carrier_key)
    async with shipper, carrier:
        assert (await deposit(shipper, 1_000_000, "BANK-e2e-1"))["status"] == "completed"
        # The same bank transfer reported again (a client that lost its Idempotency-Key):
        # refused, and the money is on the books once.
        again = await deposit(shipper, 1_000_000, "BANK-e2e-1")
        assert (again["status"], again["reason"]) == ("rejected", "duplicate_bank_ref"), again
        assert await get(shipper, "/v1/account") == {
            "participant_id": (await get(shipper, "/v1/me"))["participant_id"],
            "available_fen": 1_000_000, "held_fen": 0,
        }  # fmt: skip

        # The carrier's truck rests on the lane; the shipper's load takes it at its ask.
        lane = {"origin": "420100", "destination": "420800", "vehicle_class": "van-9.6"}
        await post(carrier, "/v1/offers", offer(ask_fen=300_000, lane=lane))
        load = await post(shipper, "/v1/loads", market_load(limit_fen=350_000, lane=lane))
        dealt = await load_status(shipper, load["load_id"], "dealt", "rejected")
        assert dealt["status"] == "dealt", dealt
        deal = dealt["deal"]
        assert deal["carrier_id"] == carrier_id and deal["price_fen"] == 300_000
        # The hold shrank from the limit to the price.
        balance = await until(lambda: get(shipper, "/v1/account"),
                              lambda b: b["held_fen"] == 300_000, what="re-sized hold")  # fmt: skip
        assert balance["available_fen"] == 700_000

        await post(carrier, f"/v1/deals/{deal['deal_id']}/pickup")
        await load_status(shipper, load["load_id"], "picked_up", "delivered", "settled")
        await post(carrier, f"/v1/deals/{deal['deal_id']}/delivered", {"proof_ref": "POD-e2e-1"})
        await load_status(shipper, load["load_id"], "settled")
        fee = 300_000 * FEE_BPS // 10_000
        assert await until(lambda: get(carrier, "/v1/account"),
                           lambda b: b["available_fen"] > 0, what="payout") == {
            "participant_id": carrier_id, "available_fen": 300_000 - fee, "held_fen": 0,
        }  # fmt: skip
        assert await get(shipper, "/v1/account") == {**balance, "held_fen": 0}

        # More than the shipper has: refused at the gate, nothing held.
        big = await post(shipper, "/v1/loads", market_load(limit_fen=900_000))
        refused = await load_status(shipper, big["load_id"], "rejected", "open", "dealt")
        assert refused["status"] == "rejected" and refused["reject_reason"] == "insufficient_funds"
        assert (await get(shipper, "/v1/account"))["held_fen"] == 0

        # The carrier takes its money out; asking for more than is left is refused.
        ok = await post(carrier, "/v1/withdrawals", {"amount_fen": 100_000, "bank_ref": "W-1"})
        no = await post(carrier, "/v1/withdrawals", {"amount_fen": 10**9, "bank_ref": "W-2"})
        for req, status in ((ok, "completed"), (no, "rejected")):
            got = await until(lambda r=req: get(carrier, f"/v1/money/{r['request_id']}"),
                              lambda m: m["status"] != "requested", what="withdrawal")  # fmt: skip
            assert got["status"] == status, got
        assert (await get(carrier, "/v1/account"))["available_fen"] == 200_000 - fee
        statement = await get(carrier, "/v1/account/statement?limit=100")
        assert [line["code"] for line in statement["items"]] == ["payout", "withdrawal"]
        # The shipper's statement walked two lines a page gives the whole of it, once.
        whole = await get(shipper, "/v1/account/statement?limit=100")
        assert whole["next_cursor"] is None
        assert [x["code"] for x in whole["items"]] == ["deposit", "hold", "resize", "hold",
                                                       "delivery"]  # fmt: skip
        walked, cursor = [], None
        for _ in range(10):
            page = await get(shipper, "/v1/account/statement?limit=2"
                             + (f"&cursor={cursor}" if cursor else ""))  # fmt: skip
            assert len(page["items"]) <= 2
            walked += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == whole["items"]
        bad = await shipper.get("/v1/account/statement?cursor=not-ours")
        assert bad.status_code == 422 and bad.json()["type"].endswith("/invalid"), bad.text

    done = ledger_check(exchange)
    assert done.returncode == 0, done.stdout + done.stderr
    await audit_clean(exchange)


async def test_auction_won_on_the_stream_disputed_and_split(exchange):
    _, shipper_key = await exchange.participant("shipper")
    carrier_id, carrier_key = await exchange.participant("carrier")
    _, operator_key = await exchange.participant("operator")
    lane = {"origin": "420500", "destination": "420100", "vehicle_class": "flatbed-13"}
    shipper, operator = exchange.client(shipper_key), exchange.client(operator_key)
    async with shipper, operator, CarrierClient(exchange.gateway_url, carrier_key,
                                                 lanes=["420500>420100>flatbed-13"]) as stream:  # fmt: skip
        assert (await deposit(shipper, 500_000))["status"] == "completed"
        body = market_load(lane=lane)
        del body["limit_fen"]
        body.update(mode="auction", auction={"closes_at": now_ms() + 4_000, "reserve_fen": 400_000,
                                             "instant_fen": None, "sealed": False})  # fmt: skip
        load = await post(shipper, "/v1/loads", body)
        load_id = load["load_id"]
        # The carrier sees the auction open on its stream and bids on the same socket.
        async with asyncio.timeout(60):
            async for frame in stream.events():
                event = frame.get("event") or {}
                if event.get("type") == "auction.opened" and event["data"]["load_id"] == load_id:
                    break
        placed = await stream.bid(load_id, 380_000)  # CommandError if refused
        assert placed["load_id"] == load_id and placed["bid_id"], placed
        dealt = await load_status(shipper, load_id, "dealt", "expired", timeout_s=90)
        assert dealt["status"] == "dealt" and dealt["deal"]["price_fen"] == 380_000
        assert dealt["deal"]["carrier_id"] == carrier_id
        deal_id = dealt["deal"]["deal_id"]

        await post(shipper, f"/v1/deals/{deal_id}/dispute", {"reason": "half the pallets wet"})
        await until(lambda: get(shipper, f"/v1/deals/{deal_id}"),
                    lambda d: d["status"] == "disputed", what="disputed")  # fmt: skip
        await post(operator, f"/v1/deals/{deal_id}/decision",
                   {"resolution": "split", "carrier_fen": 200_000})  # fmt: skip
        await load_status(shipper, load_id, "settled")
        # The shipper paid 200,000 of the 380,000 held; the rest came back.
        assert await until(lambda: get(shipper, "/v1/account"),
                           lambda b: b["held_fen"] == 0, what="split settled") == {
            "participant_id": dealt["shipper_id"], "available_fen": 300_000, "held_fen": 0,
        }  # fmt: skip
    done = ledger_check(exchange)
    assert done.returncode == 0, done.stdout + done.stderr
    await audit_clean(exchange)
