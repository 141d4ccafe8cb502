"""Invariants on long random logs: whatever happened, the market stays sane."""

from __future__ import annotations

import orjson
import pytest

from tests.unit.matching.logs import random_log

# What may end a command's outputs (after the timer events), by command type.
LAST = {
    "load.post": {"deal.made", "load.rested", "auction.opened", "order.rejected"},
    "offer.post": {"deal.made", "offer.rested", "order.rejected"},
    "bid.place": {"bid.accepted", "auction.closed", "order.rejected"},
    "load.cancel": {"order.cancelled", "order.rejected"},
    "offer.cancel": {"order.cancelled", "order.rejected"},
    "bid.withdraw": {"order.cancelled", "order.rejected"},
}


def _run(engine_cls, seed, n=3000, ids=None):
    log = random_log(seed, n, ids)
    engine = engine_cls()
    events = []
    for i in range(0, n, 250):
        events.extend(engine.process(log[i : i + 250]))
    return log, events, engine


@pytest.mark.parametrize("seed", range(4))
def test_every_command_gets_its_outcome(seed, engine_cls):
    log, events, _ = _run(engine_cls, seed, ids=6)
    by_cause = {}
    for ev in events:
        by_cause.setdefault(ev["cause"], []).append(ev)
    for cmd in log:
        outs = by_cause.get(cmd["id"], [])
        assert [e["id"] for e in outs] == [f"{cmd['id']}:{i}" for i in range(len(outs))]
        if cmd["type"] == "clock.tick" and type(cmd["ts"]) is int:
            continue
        assert outs, cmd
        last = outs[-1]
        assert last["type"] in LAST.get(cmd["type"], {"order.rejected"}), (cmd, outs)
    assert sum(len(v) for v in by_cause.values()) == len(events)


@pytest.mark.parametrize("seed", range(4))
def test_no_load_trades_twice_and_no_deal_breaks_a_limit(seed, engine_cls):
    log, events, _ = _run(engine_cls, seed)  # fresh ids: each load id names one load
    posted = {}
    for cmd in log:
        if cmd["type"] in ("load.post", "offer.post") and isinstance(cmd["data"], dict):
            ref = cmd["data"].get("load_id") or cmd["data"].get("offer_id")
            if isinstance(ref, str):
                posted[ref] = cmd["data"]
    deals = [e["data"] for e in events if e["type"] == "deal.made"]
    assert deals, "the log should make deals"
    assert len({d["deal_id"] for d in deals}) == len(deals)
    assert len({d["load_id"] for d in deals}) == len(deals)
    for d in deals:
        load = posted[d["load_id"]]
        assert d["deal_id"] == "deal:" + d["load_id"]
        assert d["lane"] == load["lane"]
        if d["offer_id"] is not None:
            offer = posted[d["offer_id"]]
            assert offer["ask_fen"] <= d["price_fen"] <= load["limit_fen"]
            assert d["price_fen"] in (offer["ask_fen"], load["limit_fen"])
            assert offer["lane"] == load["lane"]
        else:
            reserve = load["auction"]["reserve_fen"]
            assert reserve is None or d["price_fen"] <= reserve


@pytest.mark.parametrize("seed", range(4))
def test_no_capacity_goes_below_zero(seed, engine_cls):
    log, events, engine = _run(engine_cls, seed)
    posted = {
        c["data"]["load_id"]: c["data"]
        for c in log
        if c["type"] == "load.post"
        and isinstance(c["data"], dict)
        and isinstance(c["data"].get("load_id"), str)
    }
    carried = {}
    for ev in events:
        if ev["type"] == "deal.made" and ev["data"]["offer_id"] is not None:
            load = posted[ev["data"]["load_id"]]
            kg, dm3 = carried.get(ev["data"]["offer_id"], (0, 0))
            carried[ev["data"]["offer_id"]] = (kg + load["weight_kg"], dm3 + load["volume_dm3"])
        if ev["type"] == "offer.rested":
            assert ev["data"]["remaining_kg"] > 0 and ev["data"]["remaining_dm3"] > 0
    offers = {
        c["data"]["offer_id"]: c["data"]
        for c in log
        if c["type"] == "offer.post"
        and isinstance(c["data"], dict)
        and isinstance(c["data"].get("offer_id"), str)
    }
    for offer_id, (kg, dm3) in carried.items():
        assert kg <= offers[offer_id]["capacity_kg"]
        assert dm3 <= offers[offer_id]["capacity_dm3"]
    for row in orjson.loads(engine.snapshot())["offers"]:
        assert row[6] > 0 and row[7] > 0


@pytest.mark.parametrize("seed", range(4))
def test_no_resting_load_and_offer_that_should_have_crossed(seed, engine_cls):
    log = random_log(seed, 3000)
    engine = engine_cls()
    for i in range(0, len(log), 100):
        engine.process(log[i : i + 100])
        state = orjson.loads(engine.snapshot())
        for load in state["loads"]:
            for offer in state["offers"]:
                crosses = (
                    load[3:6] == offer[3:6]
                    and offer[10] <= load[10]
                    and load[6] <= offer[6]
                    and load[7] <= offer[7]
                    and load[8] <= offer[9]
                    and offer[8] <= load[9]
                )
                assert not crosses, (load, offer)
