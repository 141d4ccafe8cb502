"""Command builders for the engine tests: sensible defaults, override what the test
is about. Every command is a full envelope as the engine reads it from the log."""

from __future__ import annotations

import orjson

from services.matching.engine import Engine

LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
KEY = "420100>420600>van-9.6"
OTHER_LANE = {"origin": "420100", "destination": "420500", "vehicle_class": "van-9.6"}
OTHER_KEY = "420100>420500>van-9.6"


def envelope(cid: str, typ: str, ts, data, key=KEY) -> dict:
    return {
        "id": cid,
        "type": typ,
        "v": 1,
        "ts": ts,
        "key": key,
        "source": "settlement",
        "cause": None,
        "data": data,
    }


def load_data(load_id="L1", **kw) -> dict:
    d = {
        "load_id": load_id,
        "shipper_id": "S1",
        "lane": dict(LANE),
        "weight_kg": 1000,
        "volume_dm3": 2000,
        "pickup_from": 0,
        "pickup_to": 10_000,
        "mode": "market",
        "limit_fen": 1000,
    }
    d.update(kw)
    return d


def auction_data(
    load_id="A1", closes_at=5_000, reserve_fen=None, instant_fen=None, sealed=False, **kw
) -> dict:
    d = load_data(load_id, mode="auction", **kw)
    del d["limit_fen"]
    d["auction"] = {
        "closes_at": closes_at,
        "reserve_fen": reserve_fen,
        "instant_fen": instant_fen,
        "sealed": sealed,
    }
    return d


def offer_data(offer_id="O1", **kw) -> dict:
    d = {
        "offer_id": offer_id,
        "carrier_id": "K1",
        "lane": dict(LANE),
        "capacity_kg": 10_000,
        "capacity_dm3": 50_000,
        "available_from": 0,
        "available_to": 10_000,
        "ask_fen": 800,
        "consolidate": False,
    }
    d.update(kw)
    return d


def bid_data(bid_id="B1", load_id="A1", price_fen=900, carrier_id="K1") -> dict:
    return {"bid_id": bid_id, "load_id": load_id, "carrier_id": carrier_id, "price_fen": price_fen}


class Market:
    """An engine plus a command counter: each call sends one command, returns its events."""

    def __init__(self):
        self.engine = Engine()
        self.n = 0
        self.ts = 100

    def send(self, typ, data, ts=None, key=KEY) -> list[dict]:
        self.n += 1
        if ts is not None:
            self.ts = ts
        return self.engine.process([envelope(f"c{self.n}", typ, self.ts, data, key)])

    def load(self, load_id="L1", ts=None, **kw):
        return self.send("load.post", load_data(load_id, **kw), ts)

    def auction(self, load_id="A1", ts=None, **kw):
        return self.send("load.post", auction_data(load_id, **kw), ts)

    def offer(self, offer_id="O1", ts=None, **kw):
        return self.send("offer.post", offer_data(offer_id, **kw), ts)

    def bid(self, bid_id="B1", load_id="A1", price_fen=900, carrier_id="K1", ts=None):
        return self.send("bid.place", bid_data(bid_id, load_id, price_fen, carrier_id), ts)

    def cancel_load(self, load_id="L1", shipper_id="S1", ts=None):
        return self.send("load.cancel", {"load_id": load_id, "shipper_id": shipper_id}, ts)

    def cancel_offer(self, offer_id="O1", carrier_id="K1", ts=None):
        return self.send("offer.cancel", {"offer_id": offer_id, "carrier_id": carrier_id}, ts)

    def withdraw(self, bid_id="B1", carrier_id="K1", ts=None):
        return self.send("bid.withdraw", {"bid_id": bid_id, "carrier_id": carrier_id}, ts)

    def tick(self, ts):
        return self.send("clock.tick", {}, ts)


def types(events) -> list[str]:
    return [e["type"] for e in events]


def only(events) -> dict:
    """The data of the one event a command gave."""
    assert len(events) == 1, events
    return events[0]["data"]


def reason(events) -> str:
    data = only(events)
    assert events[0]["type"] == "order.rejected", events
    return data["reason"]


def resting(engine) -> dict[str, list[str]]:
    """Ids of the live orders by kind, in arrival order, read from the snapshot (so it
    works for either engine)."""
    state = orjson.loads(engine.snapshot())
    return {
        "loads": [row[1] for row in state["loads"]],
        "offers": [row[1] for row in state["offers"]],
        "auctions": [row[1] for row in state["auctions"]],
        "bids": [bid[1] for row in state["auctions"] for bid in row[10]],
    }
