"""Traffic models: deterministic command logs for benchmarks and load tests.

Every generator is a pure function of (n, seed): the same call gives the same list of
command envelopes, byte for byte once encoded, so a benchmark figure or a failed replay
can always be reproduced. Envelopes are shaped exactly as the gateway hands them to the
engine (DESIGN "Events" and "Matching rules"): {"id", "type", "v", "ts", "key", "source",
"cause", "data"}, times in epoch ms, money in integer fen, fresh dicts per command (as if
decoded from JSON, so no consumer can profit from shared objects).

- price_only(n, seed): one lane, market loads against non-consolidating offers, windows
  always overlapping: the book reduces to a unit-quantity price-time limit order book,
  which lets wlex be compared with general order-book libraries.
- freight_mix(n, seed): the realistic mix of a Hubei market (17 origins x 30 destinations
  x 12 vehicle classes), with auctions that close, expiries, bids and cancels.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator

# 2026-03-02 00:00:00 UTC: a Monday, so a run's clock reads like a working day.
START_MS = 1_772_409_600_000
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# The 17 prefecture-level divisions of Hubei (GB/T 2260), with coordinates of the seat and
# a weight for how much freight leaves it (roughly its share of the province's output).
HUBEI: tuple[tuple[str, str, float, float, float], ...] = (
    ("420100", "Wuhan", 30.593, 114.305, 30.0),
    ("420200", "Huangshi", 30.200, 115.039, 4.0),
    ("420300", "Shiyan", 32.629, 110.798, 5.0),
    ("420500", "Yichang", 30.692, 111.286, 10.0),
    ("420600", "Xiangyang", 32.009, 112.122, 10.0),
    ("420700", "Ezhou", 30.391, 114.895, 3.0),
    ("420800", "Jingmen", 31.035, 112.199, 5.0),
    ("420900", "Xiaogan", 30.924, 113.917, 5.0),
    ("421000", "Jingzhou", 30.335, 112.240, 6.0),
    ("421100", "Huanggang", 30.447, 114.872, 5.0),
    ("421200", "Xianning", 29.841, 114.322, 3.0),
    ("421300", "Suizhou", 31.690, 113.383, 3.0),
    ("422800", "Enshi", 30.272, 109.488, 2.0),
    ("429004", "Xiantao", 30.362, 113.454, 2.0),
    ("429005", "Qianjiang", 30.402, 112.899, 2.0),
    ("429006", "Tianmen", 30.663, 113.166, 2.0),
    ("429021", "Shennongjia", 31.745, 110.676, 0.3),
)

# National hubs that Hubei freight goes to, with a weight for how much it receives.
HUBS: tuple[tuple[str, str, float, float, float], ...] = (
    ("110100", "Beijing", 39.904, 116.407, 5.0),
    ("120100", "Tianjin", 39.343, 117.362, 3.0),
    ("310100", "Shanghai", 31.230, 121.474, 8.0),
    ("320100", "Nanjing", 32.060, 118.797, 4.0),
    ("330100", "Hangzhou", 30.274, 120.155, 4.0),
    ("360100", "Nanchang", 28.682, 115.858, 4.0),
    ("410100", "Zhengzhou", 34.747, 113.625, 6.0),
    ("430100", "Changsha", 28.228, 112.939, 7.0),
    ("440100", "Guangzhou", 23.129, 113.264, 8.0),
    ("440300", "Shenzhen", 22.543, 114.058, 6.0),
    ("500100", "Chongqing", 29.563, 106.551, 6.0),
    ("510100", "Chengdu", 30.573, 104.066, 5.0),
    ("610100", "Xi'an", 34.341, 108.940, 4.0),
)

# Destinations: the 13 hubs plus the 17 Hubei divisions themselves (intra-province and
# same-city freight), 30 in all.
DESTINATIONS = HUBS + tuple((c, n, la, lo, w * 0.5) for c, n, la, lo, w in HUBEI)

# Vehicle class: (name, capacity kg, capacity dm3, fixed fen, fen per km, popularity).
# Rates are those of Chinese road freight in 2025 (a 9.6 m van ~ 6 CNY/km).
VEHICLE_CLASSES: tuple[tuple[str, int, int, int, int, float], ...] = (
    ("van-4.2", 2_000, 16_000, 15_000, 300, 14.0),
    ("van-6.8", 8_000, 38_000, 20_000, 450, 10.0),
    ("van-9.6", 15_000, 55_000, 25_000, 600, 16.0),
    ("high-rail-9.6", 18_000, 60_000, 25_000, 620, 10.0),
    ("high-rail-13", 32_000, 80_000, 30_000, 800, 14.0),
    ("high-rail-17.5", 32_000, 110_000, 35_000, 1_000, 10.0),
    ("flatbed-13", 32_000, 85_000, 30_000, 820, 5.0),
    ("flatbed-17.5", 34_000, 115_000, 35_000, 1_050, 6.0),
    ("refrigerated-6.8", 6_000, 28_000, 30_000, 600, 4.0),
    ("refrigerated-9.6", 12_000, 45_000, 35_000, 800, 5.0),
    ("container-13", 28_000, 76_000, 30_000, 850, 4.0),
    ("tanker-13", 30_000, 30_000, 40_000, 950, 2.0),
)

ROAD_CIRCUITY = 1.25  # road km per great-circle km, typical of central China
MIN_TRIP_KM = 30  # a same-city trip still costs a drive across town


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


_COORDS = {code: (lat, lon) for code, _name, lat, lon, _w in HUBEI + HUBS}


def road_km(origin: str, destination: str) -> int:
    great_circle_km = haversine_km(*_COORDS[origin], *_COORDS[destination])
    return max(MIN_TRIP_KM, round(ROAD_CIRCUITY * great_circle_km))


def _envelope(seq: int, id_prefix: str, type_: str, ts: int, key: str | None, data: dict) -> dict:
    # Zero-padded sequence: ids are unique and sort in time order, like the gateway's.
    return {
        "id": f"{id_prefix}{seq:09d}",
        "type": type_,
        "v": 1,
        "ts": ts,
        "key": key,
        "source": "gateway",
        "cause": None,
        "data": data,
    }


# ---------------------------------------------------------------------------------------
# price-only


PRICE_ONLY_LANE = ("420100", "310100", "van-9.6")
PRICE_ONLY_LIMIT_FEN = (9_950, 10_005)  # market loads: limit uniform in this range
PRICE_ONLY_ASK_FEN = (9_995, 10_050)  # offers: ask uniform in this range


def price_only_orders(n: int, seed: int) -> list[tuple[bool, int, int]]:
    """The price-only workload as unit limit orders: (is_buy, order_no, price_fen).

    Exactly n // 2 market loads (buys at their limit) and n - n // 2 offers (sells at
    their ask), shuffled. order_no is the position in the log, from 1.
    """
    rng = random.Random(seed)
    sides = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(sides)
    lo_b, hi_b = PRICE_ONLY_LIMIT_FEN
    lo_s, hi_s = PRICE_ONLY_ASK_FEN
    randint = rng.randint
    return [
        (buy, i, randint(lo_b, hi_b) if buy else randint(lo_s, hi_s))
        for i, buy in enumerate(sides, 1)
    ]


def price_only(n: int, seed: int, *, start_ms: int = START_MS, id_prefix: str = "p") -> list[dict]:
    """The price-only workload as engine commands (same orders as price_only_orders).

    Every window spans the whole run, every load fits every offer, and no offer
    consolidates: each deal takes one load and one offer, the best priced, earliest first.
    """
    origin, destination, vehicle_class = PRICE_ONLY_LANE
    key = f"{origin}>{destination}>{vehicle_class}"
    window_to = start_ms + 7 * DAY_MS
    out = []
    for buy, i, price in price_only_orders(n, seed):
        ts = start_ms + i
        lane = {"origin": origin, "destination": destination, "vehicle_class": vehicle_class}
        if buy:
            data = {
                "load_id": f"L{i}", "shipper_id": f"shipper-{i % 997}", "lane": lane,
                "weight_kg": 1_000, "volume_dm3": 4_000,
                "pickup_from": start_ms, "pickup_to": window_to,
                "mode": "market", "limit_fen": price,
            }  # fmt: skip
            out.append(_envelope(i, id_prefix, "load.post", ts, key, data))
        else:
            data = {
                "offer_id": f"O{i}", "carrier_id": f"carrier-{i % 1009}", "lane": lane,
                "capacity_kg": 15_000, "capacity_dm3": 55_000,
                "available_from": start_ms, "available_to": window_to,
                "ask_fen": price, "consolidate": False,
            }  # fmt: skip
            out.append(_envelope(i, id_prefix, "offer.post", ts, key, data))
    return out


# ---------------------------------------------------------------------------------------
# freight mix

# Shares of the mix, of all commands.
MIX = (
    ("load.post", 0.45),
    ("offer.post", 0.35),
    ("bid.place", 0.10),
    ("cancel", 0.07),  # load.cancel, offer.cancel, bid.withdraw (see CANCEL_MIX)
    ("clock.tick", 0.03),
)
AUCTION_SHARE = 0.25  # of loads
CONSOLIDATE_SHARE = 0.30  # of offers
CANCEL_MIX = (("load.cancel", 0.4), ("offer.cancel", 0.4), ("bid.withdraw", 0.2))
FTL_SHARE = 0.6  # loads that fill most of a truck; the rest are less-than-truckload
PRICE_SIGMA = 0.10  # log-normal noise on limits, asks and bids around the lane's rate
GAP_MS = (1, 6)  # gateway time between two commands, uniform: ~3.5 ms, ~1 h per 1M
SHIPPERS, CARRIERS = 20_000, 50_000


class _Pool:
    """A bag with O(1) add and O(1) random draw-and-remove (swap with the last)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list = []

    def add(self, item) -> None:
        self.items.append(item)

    def draw(self, rng: random.Random):
        items = self.items
        if not items:
            return None
        j = rng.randrange(len(items))
        items[j], items[-1] = items[-1], items[j]
        return items.pop()


def freight_mix(n: int, seed: int, *, start_ms: int = START_MS, id_prefix: str = "c") -> list[dict]:
    """n commands of the realistic mix; see iter_freight_mix."""
    return list(iter_freight_mix(n, seed, start_ms=start_ms, id_prefix=id_prefix))


def iter_freight_mix(
    n: int, seed: int, *, start_ms: int = START_MS, id_prefix: str = "c"
) -> Iterator[dict]:
    """Yield n commands: 45% loads (a quarter auctions), 35% offers (30% consolidating),
    10% bids, 7% cancels, 3% clock ticks, over 17 Hubei origins x 30 destinations x 12
    vehicle classes, popular lanes more often.

    Prices come from the lane's road distance and vehicle rate with log-normal noise, so
    about half of the loads meet an offer they can trade with. Pickup and availability
    windows last hours and some close within the run; auctions close 1 to 10 minutes after
    they open, so they really close (by later commands or clock ticks). Bids go to auctions
    still open by the generator's clock, mostly improving on the best bid it knows of;
    cancels and withdrawals name orders the generator still thinks live (some will have
    traded meanwhile, and the engine answers unknown_order, as it would in production).
    """
    rng = random.Random(seed)
    random_ = rng.random
    randint = rng.randint
    uniform = rng.uniform
    gauss = rng.gauss

    origins = [h[0] for h in HUBEI]
    origin_cum = _cumulative([h[4] for h in HUBEI])
    dests = [d[0] for d in DESTINATIONS]
    dest_cum = _cumulative([d[4] for d in DESTINATIONS])
    classes = VEHICLE_CLASSES
    class_cum = _cumulative([c[5] for c in classes])
    km = {(o, d): road_km(o, d) for o in origins for d in dests}
    kinds = [k for k, _ in MIX]
    kind_cum = _cumulative([w for _, w in MIX])
    cancel_kinds = [k for k, _ in CANCEL_MIX]
    cancel_cum = _cumulative([w for _, w in CANCEL_MIX])

    loads, offers, bids = _Pool(), _Pool(), _Pool()  # (id, owner, key, expires_at)
    # [load_id, key, closes_at, best_fen, reserve_fen, instant_fen, sealed, rate]
    auctions = _Pool()
    ts = start_ms

    def lane_draw():
        o = origins[_pick(origin_cum, random_())]
        d = dests[_pick(dest_cum, random_())]
        c = classes[_pick(class_cum, random_())]
        rate = c[3] + c[4] * km[o, d]
        return o, d, c, rate

    def noisy(rate: int) -> int:
        return max(100, round(rate * math.exp(gauss(0.0, PRICE_SIGMA))))

    for seq in range(1, n + 1):
        ts += randint(*GAP_MS)
        kind = kinds[_pick(kind_cum, random_())]
        if kind == "cancel":
            kind = cancel_kinds[_pick(cancel_cum, random_())]

        if kind == "load.post":
            o, d, c, rate = lane_draw()
            key = f"{o}>{d}>{c[0]}"
            load_id = f"L{seq}"
            shipper_id = f"shipper-{randint(1, SHIPPERS)}"
            share = uniform(0.5, 0.95) if random_() < FTL_SHARE else uniform(0.03, 0.25)
            pickup_from = ts + randint(0, 2 * HOUR_MS)
            pickup_to = pickup_from + randint(20 * MINUTE_MS, 8 * HOUR_MS)
            data = {
                "load_id": load_id, "shipper_id": shipper_id,
                "lane": {"origin": o, "destination": d, "vehicle_class": c[0]},
                "weight_kg": max(1, int(c[1] * share)),
                "volume_dm3": max(1, int(c[2] * share * uniform(0.6, 1.0))),
                "pickup_from": pickup_from, "pickup_to": pickup_to,
            }  # fmt: skip
            if random_() < AUCTION_SHARE:
                closes_at = ts + randint(1 * MINUTE_MS, 10 * MINUTE_MS)
                reserve = round(rate * uniform(1.0, 1.2)) if random_() < 0.7 else None
                instant = round(rate * uniform(0.75, 0.9)) if random_() < 0.3 else None
                if reserve is not None and instant is not None and instant > reserve:
                    instant = reserve
                sealed = random_() < 0.2
                data["mode"] = "auction"
                data["auction"] = {
                    "closes_at": closes_at, "reserve_fen": reserve,
                    "instant_fen": instant, "sealed": sealed,
                }  # fmt: skip
                auctions.add([load_id, key, closes_at, None, reserve, instant, sealed, rate])
                loads.add((load_id, shipper_id, key, closes_at))
            else:
                data["mode"] = "market"
                data["limit_fen"] = noisy(rate)
                loads.add((load_id, shipper_id, key, pickup_to))
            yield _envelope(seq, id_prefix, kind, ts, key, data)

        elif kind == "offer.post":
            o, d, c, rate = lane_draw()
            key = f"{o}>{d}>{c[0]}"
            offer_id = f"O{seq}"
            carrier_id = f"carrier-{randint(1, CARRIERS)}"
            available_from = ts + randint(-HOUR_MS, 2 * HOUR_MS)
            available_to = max(
                ts + 10 * MINUTE_MS, available_from + randint(2 * HOUR_MS, 10 * HOUR_MS)
            )
            data = {
                "offer_id": offer_id, "carrier_id": carrier_id,
                "lane": {"origin": o, "destination": d, "vehicle_class": c[0]},
                "capacity_kg": c[1], "capacity_dm3": c[2],
                "available_from": available_from, "available_to": available_to,
                "ask_fen": noisy(rate), "consolidate": random_() < CONSOLIDATE_SHARE,
            }  # fmt: skip
            offers.add((offer_id, carrier_id, key, available_to))
            yield _envelope(seq, id_prefix, kind, ts, key, data)

        elif kind == "bid.place":
            auction = _draw_live(auctions, rng, ts, 2)
            if auction is None:  # no auction open yet: a tick stands in
                yield _envelope(seq, id_prefix, "clock.tick", ts, None, {})
                continue
            load_id, key, closes_at, best, reserve, instant, sealed, rate = auction
            if best is None or sealed:
                price = noisy(rate)
            else:
                price = max(100, round(best * (1 - uniform(0.002, 0.04))))
            bid_id, carrier_id = f"B{seq}", f"carrier-{randint(1, CARRIERS)}"
            data = {
                "bid_id": bid_id,
                "load_id": load_id,
                "carrier_id": carrier_id,
                "price_fen": price,
            }
            if (reserve is None or price <= reserve) and (best is None or price < best or sealed):
                auction[3] = price if best is None else min(best, price)
            if instant is None or price > instant:  # an instant win closes the auction
                auctions.add(auction)
                bids.add((bid_id, carrier_id, key, closes_at))
            yield _envelope(seq, id_prefix, kind, ts, key, data)

        elif kind == "clock.tick":
            yield _envelope(seq, id_prefix, kind, ts, None, {})

        else:  # a cancel or a withdrawal
            pool, id_field, owner_field = {
                "load.cancel": (loads, "load_id", "shipper_id"),
                "offer.cancel": (offers, "offer_id", "carrier_id"),
                "bid.withdraw": (bids, "bid_id", "carrier_id"),
            }[kind]
            live = _draw_live(pool, rng, ts, 3)
            if live is None:
                yield _envelope(seq, id_prefix, "clock.tick", ts, None, {})
                continue
            ref_id, owner, key, _expires = live
            yield _envelope(seq, id_prefix, kind, ts, key, {id_field: ref_id, owner_field: owner})


def _draw_live(pool: _Pool, rng: random.Random, ts: int, deadline_index: int):
    """Draw an entry whose deadline is still ahead of ts, dropping the ones past it."""
    while True:
        item = pool.draw(rng)
        if item is None or item[deadline_index] > ts:
            return item


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [x / total for x in out]


def _pick(cum: list[float], u: float) -> int:
    return min(bisect.bisect_right(cum, u), len(cum) - 1)


# ---------------------------------------------------------------------------------------
# resting orders (memory)

RESTING_LANES = len(HUBEI) * len(DESTINATIONS) * len(VEHICLE_CLASSES)


def iter_resting(
    n: int, seed: int, *, start_ms: int = START_MS, id_prefix: str = "r"
) -> Iterator[dict]:
    """Yield n orders that all rest: market loads priced at half their lane's rate and
    offers asking twice it, alternating, spread evenly over every lane of the freight mix,
    windows a week long, ts 1 ms apart. Nothing can trade or expire."""
    rng = random.Random(seed)
    randint = rng.randint
    lanes = [
        (o[0], d[0], c[0], c[3] + c[4] * road_km(o[0], d[0]), c[1], c[2])
        for o in HUBEI for d in DESTINATIONS for c in VEHICLE_CLASSES
    ]  # fmt: skip
    window_to = start_ms + 7 * DAY_MS
    for seq in range(1, n + 1):
        o, d, vc, rate, cap_kg, cap_dm3 = lanes[seq % len(lanes)]
        key = f"{o}>{d}>{vc}"
        lane = {"origin": o, "destination": d, "vehicle_class": vc}
        if seq % 2:
            data = {
                "load_id": f"L{seq}", "shipper_id": f"shipper-{randint(1, SHIPPERS)}",
                "lane": lane, "weight_kg": cap_kg // 2, "volume_dm3": cap_dm3 // 2,
                "pickup_from": start_ms, "pickup_to": window_to,
                "mode": "market", "limit_fen": rate // 2,
            }  # fmt: skip
            yield _envelope(seq, id_prefix, "load.post", start_ms + seq, key, data)
        else:
            data = {
                "offer_id": f"O{seq}", "carrier_id": f"carrier-{randint(1, CARRIERS)}",
                "lane": lane, "capacity_kg": cap_kg, "capacity_dm3": cap_dm3,
                "available_from": start_ms, "available_to": window_to,
                "ask_fen": rate * 2, "consolidate": seq % 4 == 0,
            }  # fmt: skip
            yield _envelope(seq, id_prefix, "offer.post", start_ms + seq, key, data)
