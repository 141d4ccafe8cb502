"""A brute-force reference matcher: DESIGN's rules read literally, with plain lists and
linear scans, no cleverness. Slow and obviously right; the engine must give the very
same events for any log."""

from __future__ import annotations

BIG = 2**63 - 1
TYPES = (
    "load.post",
    "offer.post",
    "bid.place",
    "load.cancel",
    "offer.cancel",
    "bid.withdraw",
    "clock.tick",
)
REF = {
    "load.post": "load_id",
    "offer.post": "offer_id",
    "bid.place": "bid_id",
    "load.cancel": "load_id",
    "offer.cancel": "offer_id",
    "bid.withdraw": "bid_id",
}


def is_id(x):
    return isinstance(x, str) and len(x) > 0


def is_amount(x):
    return type(x) is int and 1 <= x <= BIG


def is_time(x):
    return type(x) is int and 0 <= x <= BIG


def lane_key(lane):
    if not isinstance(lane, dict):
        return None
    parts = [lane.get("origin"), lane.get("destination"), lane.get("vehicle_class")]
    for p in parts:
        if not is_id(p) or ">" in p:
            return None
    return ">".join(parts)


def lane_obj(key):
    o, d, c = key.split(">")
    return {"origin": o, "destination": d, "vehicle_class": c}


class Reference:
    def __init__(self):
        self.now = 0
        self.seq = 0
        self.loads = []  # resting market loads
        self.offers = []  # resting offers
        self.auctions = []  # open auctions, each with its live bids

    def process(self, commands):
        out = []
        for cmd in commands:
            out.extend(self.handle(cmd))
        return out

    # -- one command -----------------------------------------------------------------

    def handle(self, cmd):
        events = []
        cid = cmd.get("id") if isinstance(cmd, dict) else None
        if not is_id(cid):
            cid = ""
        own_key = cmd.get("key") if isinstance(cmd, dict) else None
        if not isinstance(own_key, str):
            own_key = None

        def emit(typ, key, data):
            events.append(
                {
                    "id": cid + ":" + str(len(events)),
                    "type": typ,
                    "v": 1,
                    "ts": self.now,
                    "key": key,
                    "source": "matching",
                    "cause": cid if cid else None,
                    "data": data,
                }
            )

        def reject(ref, reason):
            emit("order.rejected", own_key, {"ref_id": ref, "reason": reason})
            return events

        if not isinstance(cmd, dict):
            return reject(None, "invalid")
        typ = cmd.get("type")
        data = cmd.get("data")
        ref = None
        if typ in REF and isinstance(data, dict) and isinstance(data.get(REF[typ]), str):
            ref = data.get(REF[typ])
        if cid == "" or not is_time(cmd.get("ts")):
            return reject(ref, "invalid")

        self.now = max(self.now, cmd["ts"])
        self.fire_timers(emit)
        if typ not in TYPES:
            return reject(None, "invalid")
        if typ == "clock.tick":
            return events
        if not isinstance(data, dict):
            return reject(None, "invalid")
        getattr(self, typ.replace(".", "_"))(data, ref, emit, reject)
        return events

    def fire_timers(self, emit):
        due = []
        for load in self.loads:
            if load["pickup_to"] < self.now:
                due.append((load["pickup_to"], load["seq"], "load", load))
        for offer in self.offers:
            if offer["available_to"] < self.now:
                due.append((offer["available_to"], offer["seq"], "offer", offer))
        for auction in self.auctions:
            if auction["closes_at"] <= self.now:
                due.append((auction["closes_at"], auction["seq"], "auction", auction))
        due.sort(key=lambda t: (t[0], t[1]))
        for _, _, kind, order in due:
            if kind == "load":
                self.loads.remove(order)
                emit("order.expired", order["key"], {"ref_id": order["load_id"]})
            elif kind == "offer":
                self.offers.remove(order)
                emit("order.expired", order["key"], {"ref_id": order["offer_id"]})
            else:
                self.close(order, emit)

    def close(self, auction, emit):
        self.auctions.remove(auction)
        best = None
        for bid in auction["bids"]:
            if best is None or (bid["price_fen"], bid["seq"]) < (best["price_fen"], best["seq"]):
                best = bid
        if best is not None:
            emit(
                "deal.made",
                auction["key"],
                {
                    "deal_id": "deal:" + auction["load_id"],
                    "load_id": auction["load_id"],
                    "offer_id": None,
                    "bid_id": best["bid_id"],
                    "shipper_id": auction["shipper_id"],
                    "carrier_id": best["carrier_id"],
                    "price_fen": best["price_fen"],
                    "lane": lane_obj(auction["key"]),
                },
            )
            emit(
                "auction.closed",
                auction["key"],
                {
                    "load_id": auction["load_id"],
                    "bid_id": best["bid_id"],
                    "price_fen": best["price_fen"],
                },
            )
        else:
            emit(
                "auction.closed",
                auction["key"],
                {"load_id": auction["load_id"], "bid_id": None, "price_fen": None},
            )

    def live_load(self, load_id):
        for load in self.loads + self.auctions:
            if load["load_id"] == load_id:
                return load
        return None

    @staticmethod
    def eligible(load, offer):
        return (
            load["key"] == offer["key"]
            and offer["ask_fen"] <= load["limit_fen"]
            and load["weight_kg"] <= offer["remaining_kg"]
            and load["volume_dm3"] <= offer["remaining_dm3"]
            and load["pickup_from"] <= offer["available_to"]
            and offer["available_from"] <= load["pickup_to"]
        )

    # -- commands --------------------------------------------------------------------

    def load_post(self, d, ref, emit, reject):
        fields = (
            "load_id",
            "shipper_id",
            "lane",
            "weight_kg",
            "volume_dm3",
            "pickup_from",
            "pickup_to",
            "mode",
        )
        if any(f not in d for f in fields):
            return reject(ref, "invalid")
        key = lane_key(d["lane"])
        ok = (
            is_id(d["load_id"])
            and is_id(d["shipper_id"])
            and key is not None
            and is_amount(d["weight_kg"])
            and is_amount(d["volume_dm3"])
            and is_time(d["pickup_from"])
            and is_time(d["pickup_to"])
            and d["pickup_from"] <= d["pickup_to"]
        )
        if not ok:
            return reject(ref, "invalid")
        mode = d["mode"]
        if mode == "market" and isinstance(mode, str):
            if not is_amount(d.get("limit_fen")):
                return reject(ref, "invalid")
        elif mode == "auction" and isinstance(mode, str):
            a = d.get("auction")
            if not isinstance(a, dict):
                return reject(ref, "invalid")
            reserve = a.get("reserve_fen")
            instant = a.get("instant_fen")
            if not (
                is_time(a.get("closes_at"))
                and a["closes_at"] <= d["pickup_to"]
                and type(a.get("sealed")) is bool
                and (reserve is None or is_amount(reserve))
                and (instant is None or is_amount(instant))
            ):
                return reject(ref, "invalid")
            if reserve is not None and instant is not None and instant > reserve:
                return reject(ref, "invalid")
        else:
            return reject(ref, "invalid")
        if d["pickup_to"] < self.now:
            return reject(ref, "expired")
        if mode == "auction" and d["auction"]["closes_at"] <= self.now:
            return reject(ref, "expired")
        if self.live_load(d["load_id"]) is not None:
            return reject(ref, "duplicate_id")
        self.seq += 1
        load = {
            "load_id": d["load_id"],
            "shipper_id": d["shipper_id"],
            "key": key,
            "weight_kg": d["weight_kg"],
            "volume_dm3": d["volume_dm3"],
            "pickup_from": d["pickup_from"],
            "pickup_to": d["pickup_to"],
            "seq": self.seq,
        }
        if mode == "auction":
            a = d["auction"]
            load.update(
                closes_at=a["closes_at"],
                reserve_fen=a.get("reserve_fen"),
                instant_fen=a.get("instant_fen"),
                sealed=a["sealed"],
                bids=[],
            )
            self.auctions.append(load)
            emit(
                "auction.opened",
                key,
                {
                    "load_id": load["load_id"],
                    "closes_at": load["closes_at"],
                    "sealed": load["sealed"],
                },
            )
            return None
        load["limit_fen"] = d["limit_fen"]
        best = None
        for offer in self.offers:
            if self.eligible(load, offer):
                if best is None or (offer["ask_fen"], offer["seq"]) < (
                    best["ask_fen"],
                    best["seq"],
                ):
                    best = offer
        if best is None:
            self.loads.append(load)
            emit("load.rested", key, {"load_id": load["load_id"]})
            return None
        best["remaining_kg"] -= load["weight_kg"]
        best["remaining_dm3"] -= load["volume_dm3"]
        if not (best["consolidate"] and best["remaining_kg"] > 0 and best["remaining_dm3"] > 0):
            self.offers.remove(best)
        emit("deal.made", key, self.deal(load, best, best["ask_fen"]))
        return None

    def deal(self, load, offer, price):
        return {
            "deal_id": "deal:" + load["load_id"],
            "load_id": load["load_id"],
            "offer_id": offer["offer_id"],
            "bid_id": None,
            "shipper_id": load["shipper_id"],
            "carrier_id": offer["carrier_id"],
            "price_fen": price,
            "lane": lane_obj(load["key"]),
        }

    def offer_post(self, d, ref, emit, reject):
        fields = (
            "offer_id",
            "carrier_id",
            "lane",
            "capacity_kg",
            "capacity_dm3",
            "available_from",
            "available_to",
            "ask_fen",
            "consolidate",
        )
        if any(f not in d for f in fields):
            return reject(ref, "invalid")
        key = lane_key(d["lane"])
        ok = (
            is_id(d["offer_id"])
            and is_id(d["carrier_id"])
            and key is not None
            and is_amount(d["capacity_kg"])
            and is_amount(d["capacity_dm3"])
            and is_time(d["available_from"])
            and is_time(d["available_to"])
            and d["available_from"] <= d["available_to"]
            and is_amount(d["ask_fen"])
            and type(d["consolidate"]) is bool
        )
        if not ok:
            return reject(ref, "invalid")
        if d["available_to"] < self.now:
            return reject(ref, "expired")
        if any(o["offer_id"] == d["offer_id"] for o in self.offers):
            return reject(ref, "duplicate_id")
        self.seq += 1
        offer = {
            "offer_id": d["offer_id"],
            "carrier_id": d["carrier_id"],
            "key": key,
            "remaining_kg": d["capacity_kg"],
            "remaining_dm3": d["capacity_dm3"],
            "available_from": d["available_from"],
            "available_to": d["available_to"],
            "ask_fen": d["ask_fen"],
            "consolidate": d["consolidate"],
            "seq": self.seq,
        }
        deals = 0
        while True:
            best = None
            for load in self.loads:
                if self.eligible(load, offer):
                    if best is None or (-load["limit_fen"], load["seq"]) < (
                        -best["limit_fen"],
                        best["seq"],
                    ):
                        best = load
            if best is None:
                break
            self.loads.remove(best)
            offer["remaining_kg"] -= best["weight_kg"]
            offer["remaining_dm3"] -= best["volume_dm3"]
            deals += 1
            emit("deal.made", key, self.deal(best, offer, best["limit_fen"]))
            if not offer["consolidate"]:
                break
        if deals == 0 or (
            offer["consolidate"] and offer["remaining_kg"] > 0 and offer["remaining_dm3"] > 0
        ):
            self.offers.append(offer)
            emit(
                "offer.rested",
                key,
                {
                    "offer_id": offer["offer_id"],
                    "remaining_kg": offer["remaining_kg"],
                    "remaining_dm3": offer["remaining_dm3"],
                },
            )

    def bid_place(self, d, ref, emit, reject):
        if not (
            is_id(d.get("bid_id"))
            and is_id(d.get("load_id"))
            and is_id(d.get("carrier_id"))
            and is_amount(d.get("price_fen"))
        ):
            return reject(ref, "invalid")
        for a in self.auctions:
            if any(b["bid_id"] == d["bid_id"] for b in a["bids"]):
                return reject(ref, "duplicate_id")
        load = self.live_load(d["load_id"])
        if load is None:
            return reject(ref, "unknown_order")
        if load not in self.auctions:
            return reject(ref, "not_auction")
        price = d["price_fen"]
        if load["reserve_fen"] is not None and price > load["reserve_fen"]:
            return reject(ref, "above_reserve")
        prices = [b["price_fen"] for b in load["bids"]]
        if not load["sealed"] and prices and price >= min(prices):
            return reject(ref, "not_improving")
        self.seq += 1
        load["bids"].append(
            {
                "bid_id": d["bid_id"],
                "carrier_id": d["carrier_id"],
                "price_fen": price,
                "seq": self.seq,
            }
        )
        best = None if load["sealed"] else min(prices + [price])
        emit(
            "bid.accepted",
            load["key"],
            {
                "bid_id": d["bid_id"],
                "load_id": load["load_id"],
                "carrier_id": d["carrier_id"],
                "price_fen": price,
                "best_fen": best,
            },
        )
        if load["instant_fen"] is not None and price <= load["instant_fen"]:
            self.close(load, emit)

    def load_cancel(self, d, ref, emit, reject):
        if not (is_id(d.get("load_id")) and is_id(d.get("shipper_id"))):
            return reject(ref, "invalid")
        load = self.live_load(d["load_id"])
        if load is None:
            return reject(ref, "unknown_order")
        if load["shipper_id"] != d["shipper_id"]:
            return reject(ref, "not_owner")
        if load in self.auctions:
            self.auctions.remove(load)
        else:
            self.loads.remove(load)
        emit("order.cancelled", load["key"], {"ref_id": load["load_id"]})

    def offer_cancel(self, d, ref, emit, reject):
        if not (is_id(d.get("offer_id")) and is_id(d.get("carrier_id"))):
            return reject(ref, "invalid")
        for offer in self.offers:
            if offer["offer_id"] == d["offer_id"]:
                if offer["carrier_id"] != d["carrier_id"]:
                    return reject(ref, "not_owner")
                self.offers.remove(offer)
                emit("order.cancelled", offer["key"], {"ref_id": offer["offer_id"]})
                return None
        return reject(ref, "unknown_order")

    def bid_withdraw(self, d, ref, emit, reject):
        if not (is_id(d.get("bid_id")) and is_id(d.get("carrier_id"))):
            return reject(ref, "invalid")
        for a in self.auctions:
            for bid in a["bids"]:
                if bid["bid_id"] == d["bid_id"]:
                    if bid["carrier_id"] != d["carrier_id"]:
                        return reject(ref, "not_owner")
                    a["bids"].remove(bid)
                    emit("order.cancelled", a["key"], {"ref_id": bid["bid_id"]})
                    return None
        return reject(ref, "unknown_order")
