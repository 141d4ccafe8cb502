"""Shape checks of the engine's commands: the `invalid` reason, and nothing else.

Each parser takes the command's `data` and returns a tuple of the fields the engine
needs, or None when the command is invalid. The rules (docs/matching.md lists them):
ids are non-empty strings; prices and sizes are ints above zero; times are ints at or
above zero; every int is at most 2**63 - 1 so it survives any JSON codec; `bool` is not
an int here (Python says True == 1; a price of `true` is a bug upstream, not one fen);
floats are never accepted, even 5.0; windows must not be inverted (from <= to); lane
parts are non-empty strings without ">" (the lane key separator).

Checks against the state of the market (expired, duplicate_id, ...) are the engine's.
"""

from __future__ import annotations

INT_MAX = 2**63 - 1

# What the parsers return. The annotations serve a compiler (mypyc: see
# loadtests/bench_core_mypyc.py) and CPython ignores them; an unannotated parameter is
# any object (a command's data may be anything).
LaneParts = tuple[str, str, str, str]  # origin, destination, vehicle_class, key
AuctionTerms = tuple[int, int | None, int | None, bool]  # closes_at, reserve, instant, sealed
LoadPost = tuple[str, str, LaneParts, int, int, int, int, int, AuctionTerms | None]
OfferPost = tuple[str, str, LaneParts, int, int, int, int, int, bool]


def ref_of(data, field: str) -> str | None:
    """The id a command names, for its rejection: a string, else None."""
    if type(data) is dict:
        ref = data.get(field)
        if type(ref) is str:
            return ref
    return None


def _id(x) -> bool:
    return type(x) is str and x != ""


def _amount(x) -> bool:
    return type(x) is int and 0 < x <= INT_MAX


def _time(x) -> bool:
    return type(x) is int and 0 <= x <= INT_MAX


def lane_parts(lane) -> LaneParts | None:
    """(origin, destination, vehicle_class, key) of a valid lane object, else None."""
    try:
        o = lane["origin"]
        d = lane["destination"]
        c = lane["vehicle_class"]
    except (KeyError, TypeError):  # not an object, or a part missing
        return None
    if (
        type(o) is str
        and type(d) is str
        and type(c) is str
        and o
        and d
        and c
        and ">" not in o
        and ">" not in d
        and ">" not in c
    ):
        return o, d, c, f"{o}>{d}>{c}"
    return None


def is_time(x) -> bool:
    return type(x) is int and 0 <= x <= INT_MAX


def parse_load_post(data) -> LoadPost | None:
    """(load_id, shipper_id, lane_parts, weight_kg, volume_dm3, pickup_from, pickup_to,
    limit_fen, auction) with auction None for a market load, else
    (closes_at, reserve_fen, instant_fen, sealed) and limit_fen 0 (an auction load has no
    limit; 0 keeps the field an int)."""
    if type(data) is not dict:
        return None
    try:
        load_id = data["load_id"]
        shipper_id = data["shipper_id"]
        lane = data["lane"]
        weight_kg = data["weight_kg"]
        volume_dm3 = data["volume_dm3"]
        pickup_from = data["pickup_from"]
        pickup_to = data["pickup_to"]
        mode = data["mode"]
    except KeyError:
        return None
    if not (
        (type(load_id) is str and load_id != "")
        and (type(shipper_id) is str and shipper_id != "")
        and (type(weight_kg) is int and 0 < weight_kg <= INT_MAX)
        and (type(volume_dm3) is int and 0 < volume_dm3 <= INT_MAX)
        and (type(pickup_from) is int and 0 <= pickup_from <= INT_MAX)
        and (type(pickup_to) is int and 0 <= pickup_to <= INT_MAX)
        and pickup_from <= pickup_to
    ):
        return None
    parts = lane_parts(lane)
    if parts is None:
        return None
    if mode == "market" and type(mode) is str:
        limit_fen = data.get("limit_fen")
        if not (type(limit_fen) is int and 0 < limit_fen <= INT_MAX):
            return None
        return (
            load_id,
            shipper_id,
            parts,
            weight_kg,
            volume_dm3,
            pickup_from,
            pickup_to,
            limit_fen,
            None,
        )
    if mode == "auction" and type(mode) is str:
        auction = data.get("auction")
        if type(auction) is not dict:
            return None
        closes_at = auction.get("closes_at")
        reserve_fen = auction.get("reserve_fen")
        instant_fen = auction.get("instant_fen")
        sealed = auction.get("sealed")
        if not (
            (type(closes_at) is int and 0 <= closes_at <= INT_MAX)
            and closes_at <= pickup_to
            and type(sealed) is bool
            and (reserve_fen is None or (type(reserve_fen) is int and 0 < reserve_fen <= INT_MAX))
            and (instant_fen is None or (type(instant_fen) is int and 0 < instant_fen <= INT_MAX))
        ):
            return None
        if reserve_fen is not None and instant_fen is not None and instant_fen > reserve_fen:
            return None
        return (
            load_id,
            shipper_id,
            parts,
            weight_kg,
            volume_dm3,
            pickup_from,
            pickup_to,
            0,
            (closes_at, reserve_fen, instant_fen, sealed),
        )
    return None


def parse_offer_post(data) -> OfferPost | None:
    """(offer_id, carrier_id, lane_parts, capacity_kg, capacity_dm3, available_from,
    available_to, ask_fen, consolidate)."""
    if type(data) is not dict:
        return None
    try:
        offer_id = data["offer_id"]
        carrier_id = data["carrier_id"]
        lane = data["lane"]
        capacity_kg = data["capacity_kg"]
        capacity_dm3 = data["capacity_dm3"]
        available_from = data["available_from"]
        available_to = data["available_to"]
        ask_fen = data["ask_fen"]
        consolidate = data["consolidate"]
    except KeyError:
        return None
    if not (
        (type(offer_id) is str and offer_id != "")
        and (type(carrier_id) is str and carrier_id != "")
        and (type(capacity_kg) is int and 0 < capacity_kg <= INT_MAX)
        and (type(capacity_dm3) is int and 0 < capacity_dm3 <= INT_MAX)
        and (type(available_from) is int and 0 <= available_from <= INT_MAX)
        and (type(available_to) is int and 0 <= available_to <= INT_MAX)
        and available_from <= available_to
        and (type(ask_fen) is int and 0 < ask_fen <= INT_MAX)
        and type(consolidate) is bool
    ):
        return None
    parts = lane_parts(lane)
    if parts is None:
        return None
    return (
        offer_id,
        carrier_id,
        parts,
        capacity_kg,
        capacity_dm3,
        available_from,
        available_to,
        ask_fen,
        consolidate,
    )


def parse_bid_place(data) -> tuple[str, str, str, int] | None:
    """(bid_id, load_id, carrier_id, price_fen)."""
    if type(data) is not dict:
        return None
    bid_id = data.get("bid_id")
    load_id = data.get("load_id")
    carrier_id = data.get("carrier_id")
    price_fen = data.get("price_fen")
    if (
        (type(bid_id) is str and bid_id != "")
        and (type(load_id) is str and load_id != "")
        and (type(carrier_id) is str and carrier_id != "")
        and (type(price_fen) is int and 0 < price_fen <= INT_MAX)
    ):
        return bid_id, load_id, carrier_id, price_fen
    return None


def parse_pair(data, ref_field: str, owner_field: str) -> tuple[str, str] | None:
    """(ref_id, owner_id) of a cancel or a withdrawal."""
    if type(data) is not dict:
        return None
    ref = data.get(ref_field)
    owner = data.get(owner_field)
    if (type(ref) is str and ref != "") and (type(owner) is str and owner != ""):
        return ref, owner
    return None
