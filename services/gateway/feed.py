"""The carriers' market feed, pure: who may see which market event in what form, the
subscription filter, the cursor, and the bounded ring of recent events.

No Kafka, database or clock here: services.gateway.hub feeds it decoded envelopes and
the rows it looked up, and ships the bytes it returns.

What a carrier sees (docs/stream.md):
- public, to every carrier whose subscription matches the event's lane:
  auction.opened and load.rested (with the load's public fields beside the event),
  bid.accepted of an open auction reduced to {load_id, best_fen} (who bid, and the bid
  id, stay private), auction.closed with bid_id null (and price_fen null when the
  auction was sealed or unknown), order.cancelled / order.expired of a load (it left
  the book);
- private, to the owner whatever its subscription: its own bid.accepted (sealed
  auctions: only this one, best_fen null), deal.made, offer.rested, and order.rejected /
  order.cancelled / order.expired of its own bid or offer ids.
Anything else (another carrier's deal, a load's rejection) is nobody's on this feed.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

LIST_MAX = 200  # entries per subscription list: a carrier watches lanes, not the map
PARTITIONS_MAX = 1024
CURSOR_CHARS_MAX = 16_384

# A load's fields a bidder needs. Not the shipper, not the declared value, not the
# reserve: the reserve is the shipper's walk-away price, hidden as in any reverse auction
# (a bid above it is refused as above_reserve, which tells the bidder no more than that).
_LOAD_FIELDS = (
    "lane", "weight_kg", "volume_dm3", "cargo_category", "pickup_from", "pickup_to",
    "deliver_by", "mode", "limit_fen",
)  # fmt: skip


class FeedError(ValueError):
    """A subscription or cursor the feed cannot take; reason is an API reason word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------- filter


@dataclass(frozen=True, slots=True)
class Subscription:
    """Which lanes a connection follows. Each given list narrows (AND across lists, OR
    within one); None means "any". An empty Subscription follows every lane.

    lanes: lane keys "origin>destination>vehicle_class"; regions: an event matches when
    its origin or destination is one of them; vehicle_classes: the class of the lane.
    """

    lanes: frozenset[str] | None = None
    regions: frozenset[str] | None = None
    vehicle_classes: frozenset[str] | None = None

    def matches(self, lane_key: str | None) -> bool:
        if lane_key is None:
            return False
        if self.lanes is not None and lane_key not in self.lanes:
            return False
        if self.regions is None and self.vehicle_classes is None:
            return True
        parts = lane_key.split(">")
        if len(parts) != 3:
            return False
        origin, destination, vehicle_class = parts
        if self.regions is not None and not (origin in self.regions or destination in self.regions):
            return False
        return self.vehicle_classes is None or vehicle_class in self.vehicle_classes


def _lane_key(item: Any) -> str:
    if isinstance(item, str) and item.count(">") == 2 and len(item) <= 64:
        return item
    if isinstance(item, dict) and set(item) == {"origin", "destination", "vehicle_class"}:
        if all(isinstance(v, str) and 0 < len(v) <= 32 for v in item.values()):
            return f"{item['origin']}>{item['destination']}>{item['vehicle_class']}"
    raise FeedError("invalid", 'a lane is "origin>destination>vehicle_class" or a lane object')


def _strings(name: str, value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > LIST_MAX:
        raise FeedError("invalid", f"{name} is a list of at most {LIST_MAX} entries")
    if name == "lanes":
        return frozenset(_lane_key(v) for v in value)
    if not all(isinstance(v, str) and 0 < len(v) <= 32 for v in value):
        raise FeedError("invalid", f"{name} holds strings")
    return frozenset(value)


def parse_subscription(frame: dict[str, Any]) -> Subscription:
    """The Subscription of a subscribe frame's lanes / regions / vehicle_classes."""
    return Subscription(
        lanes=_strings("lanes", frame.get("lanes")),
        regions=_strings("regions", frame.get("regions")),
        vehicle_classes=_strings("vehicle_classes", frame.get("vehicle_classes")),
    )


# ---------------------------------------------------------------------------- cursor


def encode_cursor(offsets: list[int] | tuple[int, ...]) -> str:
    """The next offset to read of every partition of `market`, index = partition, as
    unpadded base64url of a JSON list: short, opaque to clients, URL-safe."""
    return base64.urlsafe_b64encode(orjson.dumps(offsets)).rstrip(b"=").decode()


def decode_cursor(cursor: Any) -> list[int]:
    """The offsets of a cursor made by encode_cursor; FeedError("invalid") otherwise."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= CURSOR_CHARS_MAX:
        raise FeedError("invalid", "cursor is a string the stream gave")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offsets = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise FeedError("invalid", "cursor is not one the stream gave") from None
    if (
        not isinstance(offsets, list)
        or not 0 < len(offsets) <= PARTITIONS_MAX
        or not all(type(o) is int and 0 <= o < 1 << 62 for o in offsets)
    ):
        raise FeedError("invalid", "cursor is not one the stream gave")
    return offsets


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Entry:
    """One market record as the feed ships it. public / private are the JSON members
    `"event":{...}` (and `,"load":{...}`) of a frame, without braces, so a frame is
    built by concatenation around any cursor; None when nobody / no owner sees it."""

    partition: int
    offset: int
    lane_key: str | None
    public: bytes | None
    owner_id: str | None
    private: bytes | None

    def body_for(self, participant_id: str, subscription: Subscription | None) -> bytes | None:
        """What this participant receives of the entry, or None."""
        if self.owner_id is not None and self.owner_id == participant_id:
            return self.private
        if self.public is not None and subscription is not None:
            if subscription.matches(self.lane_key):
                return self.public
        return None


def public_load(data: dict[str, Any]) -> dict[str, Any]:
    """The public fields of a load.post's data (the gateway's `load.data`)."""
    view = {k: data.get(k) for k in _LOAD_FIELDS}
    auction = data.get("auction")
    view["auction"] = (
        {"closes_at": auction["closes_at"], "instant_fen": auction.get("instant_fen"),
         "sealed": auction.get("sealed", False)}
        if auction else None
    )  # fmt: skip
    return view


def needs_lookup(envelope: dict[str, Any]) -> str | None:
    """The id whose row (a load's, or an offer's / bid's owner) the entry of this
    envelope needs, if any."""
    t, data = envelope["type"], envelope["data"]
    if t in ("auction.opened", "load.rested", "auction.closed"):
        return data.get("load_id")
    if t == "offer.rested":
        return data.get("offer_id")
    if t in ("order.rejected", "order.cancelled", "order.expired"):
        return data.get("ref_id")
    return None


def _body(envelope: dict[str, Any], load: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {"event": envelope}
    if load is not None:
        doc["load"] = load
    return orjson.dumps(doc)[1:-1]


def _with_data(envelope: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {**envelope, "data": data}


def make_entry(
    partition: int,
    offset: int,
    envelope: dict[str, Any],
    loads: dict[str, dict[str, Any]],
    owners: dict[str, str],
) -> Entry:
    """The entry of a market envelope. loads: load_id -> public_load(); owners: bid or
    offer id -> its carrier. A missing row makes a leaner entry, never a wrong one: a
    load's event without its fields, an unknown owner's event shown to nobody."""
    t, data, key = envelope["type"], envelope["data"], envelope.get("key")
    public = private = None
    owner = None
    if t in ("auction.opened", "load.rested"):
        public = _body(envelope, loads.get(data["load_id"]))
    elif t == "bid.accepted":
        owner, private = data["carrier_id"], _body(envelope)
        if data.get("best_fen") is not None:  # open auction: the best price is public
            public = _body(_with_data(envelope, {"load_id": data["load_id"],
                                                 "best_fen": data["best_fen"]}))  # fmt: skip
    elif t == "auction.closed":
        load = loads.get(data["load_id"])
        open_auction = bool(load and load.get("auction") and not load["auction"]["sealed"])
        price = data.get("price_fen") if open_auction else None
        public = _body(_with_data(envelope, {**data, "bid_id": None, "price_fen": price}))
    elif t == "deal.made":
        owner, private = data["carrier_id"], _body(envelope)
    elif t == "offer.rested":
        owner = owners.get(data["offer_id"])
        private = _body(envelope) if owner else None
    elif t in ("order.rejected", "order.cancelled", "order.expired"):
        ref = data.get("ref_id")
        if ref is not None and ref in owners:
            owner, private = owners[ref], _body(envelope)
        elif ref is not None and ref in loads and t != "order.rejected":
            public = _body(envelope)  # the load left the book
    return Entry(partition, offset, key, public, owner, private)


def frame(cursor: str, body: bytes) -> bytes:
    """The `event` frame of a body under a cursor."""
    return b'{"type":"event","cursor":"' + cursor.encode() + b'",' + body + b"}"


# ---------------------------------------------------------------------------- ring


class Ring:
    """The last `per_partition` entries of each partition, for resuming by cursor.

    floor[p] is the lowest offset from which the ring holds every record of p up to
    the hub's position: a cursor at or above the floor of every partition can be served
    from memory; below it, the gap is read from Kafka first.
    """

    def __init__(self, start: list[int], per_partition: int) -> None:
        if per_partition < 1:
            raise ValueError("per_partition must be positive")
        self.per_partition = per_partition
        self.floor = list(start)
        self._entries: list[deque[Entry]] = [deque() for _ in start]
        self._offsets: list[deque[int]] = [deque() for _ in start]

    def append(self, entry: Entry) -> None:
        p = entry.partition
        entries, offsets = self._entries[p], self._offsets[p]
        entries.append(entry)
        offsets.append(entry.offset)
        if len(entries) > self.per_partition:
            entries.popleft()
            # Offsets of a transactional topic skip commit markers: the floor is the
            # evicted record's next offset, not the next record's.
            self.floor[p] = offsets.popleft() + 1

    def covers(self, positions: list[int]) -> bool:
        return all(pos >= floor for pos, floor in zip(positions, self.floor, strict=True))

    def since(self, partition: int, offset: int, count_max: int) -> list[Entry]:
        """Up to count_max entries of partition at or after offset, in offset order."""
        offsets = self._offsets[partition]
        i = bisect_left(offsets, offset)
        entries = self._entries[partition]
        return [entries[j] for j in range(i, min(len(entries), i + count_max))]

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries)
