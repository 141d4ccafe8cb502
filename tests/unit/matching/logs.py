"""Random command logs for the property tests: a small world (few ids, two lanes, few
participants, small prices and sizes) so that ids collide, orders cross, windows touch,
timers fire and every reject reason comes up. One generator serves Hypothesis (draw from
st.data()) and the seeded random logs (draw from random.Random)."""

from __future__ import annotations

import random

from hypothesis import strategies as st

LANES = [
    {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
    {"origin": "420100", "destination": "420500", "vehicle_class": "flatbed-13"},
]
TYPES = [
    "load.post",
    "load.post",
    "load.post",
    "offer.post",
    "offer.post",
    "offer.post",
    "bid.place",
    "bid.place",
    "bid.place",
    "load.cancel",
    "offer.cancel",
    "bid.withdraw",
    "clock.tick",
    "bad",
]
STREAKS = [["load.post"] * 8, ["offer.post"] * 8, []]
# What a broken field may be replaced with.
BAD_VALUES = [None, 0, -1, True, 1.5, "7", [], {}, 2**63]


class RandomDraw:
    """The subset of Hypothesis's drawing used below, on a seeded random.Random."""

    def __init__(self, seed, ids=6):
        self.rng = random.Random(seed)
        self.ids = ids

    def int(self, lo, hi):
        return self.rng.randint(lo, hi)

    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p):
        return self.rng.random() < p


class HypothesisDraw:
    def __init__(self, data, ids=9):
        self.data = data
        self.ids = ids

    def int(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def pick(self, seq):
        return self.data.draw(st.sampled_from(seq))

    def chance(self, p):
        # Weighted booleans keep the rare branches rare while still shrinking to False.
        return self.data.draw(st.integers(0, 99)) < int(p * 100)


class LogWriter:
    """Writes one command at a time; keeps the clock of the log it writes."""

    def __init__(self, ts=1_000):
        self.ts = ts
        self.n = 0
        self.auctions = []  # ids of auctions posted lately: bids aim at them
        self.recent = {"L": [], "O": [], "B": []}  # ids posted lately: cancels aim at them
        self.fresh = 0

    def new_id(self, d, prefix):
        """An id to post: from the small pool, or a never-used one when d.ids is None."""
        if d.ids is None:
            self.fresh += 1
            ref = f"{prefix}{self.fresh}"
        else:
            ref = f"{prefix}{d.int(0, d.ids)}"
        self.recent[prefix] = [ref, *self.recent[prefix][:4]]
        return ref

    def old_id(self, d, prefix):
        """An id to cancel or bid on: mostly one posted lately."""
        if self.recent[prefix] and d.chance(0.7):
            return d.pick(self.recent[prefix])
        return f"{prefix}{d.int(0, d.ids if d.ids is not None else 3)}"

    def command(self, d) -> dict:
        self.n += 1
        if d.chance(0.1):
            ts = self.ts - d.int(0, 20)  # a late command: the engine clock stays
        else:
            self.ts += d.int(0, 10)
            ts = self.ts
        # Streaks: loads pile up for a while, then offers, then loads... so that an
        # arriving order often faces several resting ones (multi-load consolidation,
        # ties, skipped ineligible orders), not just the one it could take.
        typ = d.pick(TYPES + STREAKS[self.n // 12 % 3])
        lane = dict(d.pick(LANES))
        key = "{origin}>{destination}>{vehicle_class}".format(**lane)
        if typ == "load.post":
            pickup_from = ts + d.int(-30, 40)
            pickup_to = pickup_from + d.int(0, 300)
            data = {
                "load_id": self.new_id(d, "L"),
                "shipper_id": f"S{d.int(0, 1)}",
                "lane": lane,
                "weight_kg": 1000 * d.int(1, 6),
                "volume_dm3": 1000 * d.int(1, 6),
                "pickup_from": pickup_from,
                "pickup_to": pickup_to,
                "mode": "market",
                "limit_fen": d.int(1, 10),
            }
            if d.chance(0.3):
                del data["limit_fen"]
                data["mode"] = "auction"
                reserve = d.int(1, 10) if d.chance(0.5) else None
                instant = d.int(1, 6) if d.chance(0.4) else None
                closes_at = ts + d.int(-3, 150)
                data["pickup_to"] = max(pickup_to, closes_at)
                data["auction"] = {
                    "closes_at": closes_at,
                    "reserve_fen": reserve,
                    "instant_fen": instant,
                    "sealed": d.chance(0.4),
                }
                self.auctions = [data["load_id"], *self.auctions[:2]]
        elif typ == "offer.post":
            available_from = ts + d.int(-30, 40)
            data = {
                "offer_id": self.new_id(d, "O"),
                "carrier_id": f"K{d.int(0, 1)}",
                "lane": lane,
                "capacity_kg": 1000 * d.int(1, 12),
                "capacity_dm3": 1000 * d.int(1, 12),
                "available_from": available_from,
                "available_to": available_from + d.int(0, 300),
                "ask_fen": d.int(1, 10),
                "consolidate": d.chance(0.5),
            }
        elif typ == "bid.place":
            aimed = self.auctions and d.chance(0.8)
            load_id = d.pick(self.auctions) if aimed else self.old_id(d, "L")
            data = {
                "bid_id": self.new_id(d, "B"),
                "load_id": load_id,
                "carrier_id": f"K{d.int(0, 1)}",
                "price_fen": d.int(1, 12),
            }
        elif typ == "load.cancel":
            data = {"load_id": self.new_id(d, "L"), "shipper_id": f"S{d.int(0, 1)}"}
        elif typ == "offer.cancel":
            data = {"offer_id": self.old_id(d, "O"), "carrier_id": f"K{d.int(0, 1)}"}
        elif typ == "bid.withdraw":
            data = {"bid_id": self.old_id(d, "B"), "carrier_id": f"K{d.int(0, 1)}"}
        elif typ == "clock.tick":
            data = {}
        else:
            typ = d.pick(["load.repost", "offer.post", "load.post", "bid.place"])
            data = {"load_id": "L0", "offer_id": "O0", "bid_id": "B0"}
        if data and d.chance(0.05):
            field = d.pick(sorted(data))
            if d.chance(0.3):
                del data[field]
            else:
                data[field] = d.pick(BAD_VALUES)
        cmd = {
            "id": f"c{self.n}",
            "type": typ,
            "v": 1,
            "ts": ts,
            "key": key,
            "source": "settlement",
            "cause": None,
            "data": data,
        }
        if d.chance(0.01):
            cmd["ts"] = d.pick([None, "1", 1.0, -5])
        return cmd


def random_log(seed, n, ids=None) -> list[dict]:
    """n commands from a seeded generator; ids=None gives every order a fresh id."""
    d = RandomDraw(seed, ids)
    writer = LogWriter()
    return [writer.command(d) for _ in range(n)]
