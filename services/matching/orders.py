"""The resting orders of the engine: plain __slots__ records, nothing more.

A resting order is touched on every scan of its book, so it is a slotted object (no
per-instance dict, attribute access at C speed) holding only what matching, the events
and the snapshot need. `live` turns False the moment the order leaves the market
(traded, cancelled, expired, closed); the book levels and the timer heaps drop such
entries lazily, so removal never searches a queue.
"""

from __future__ import annotations


class Load:
    """A market load resting in its lane's book (highest limit, earliest first)."""

    __slots__ = (
        "load_id",
        "shipper_id",
        "book",
        "weight_kg",
        "volume_dm3",
        "pickup_from",
        "pickup_to",
        "limit_fen",
        "seq",
        "live",
    )

    def __init__(
        self,
        load_id,
        shipper_id,
        book,
        weight_kg,
        volume_dm3,
        pickup_from,
        pickup_to,
        limit_fen,
        seq,
    ):
        self.load_id = load_id
        self.shipper_id = shipper_id
        self.book = book
        self.weight_kg = weight_kg
        self.volume_dm3 = volume_dm3
        self.pickup_from = pickup_from
        self.pickup_to = pickup_to
        self.limit_fen = limit_fen
        self.seq = seq
        self.live = True


class Offer:
    """A carrier's capacity resting in its lane's book (lowest ask, earliest first)."""

    __slots__ = (
        "offer_id",
        "carrier_id",
        "book",
        "remaining_kg",
        "remaining_dm3",
        "available_from",
        "available_to",
        "ask_fen",
        "consolidate",
        "seq",
        "live",
    )

    def __init__(
        self,
        offer_id,
        carrier_id,
        book,
        remaining_kg,
        remaining_dm3,
        available_from,
        available_to,
        ask_fen,
        consolidate,
        seq,
    ):
        self.offer_id = offer_id
        self.carrier_id = carrier_id
        self.book = book
        self.remaining_kg = remaining_kg
        self.remaining_dm3 = remaining_dm3
        self.available_from = available_from
        self.available_to = available_to
        self.ask_fen = ask_fen
        self.consolidate = consolidate
        self.seq = seq
        self.live = True


class Auction:
    """An auction load while it is open. It never enters a book: it trades only by bids.

    `bids` is a heap of (price_fen, seq, Bid): the lowest live bid, earliest first, is on
    top once withdrawn entries are popped. `dead` counts withdrawn entries still inside.
    """

    __slots__ = (
        "load_id",
        "shipper_id",
        "book",
        "closes_at",
        "reserve_fen",
        "instant_fen",
        "sealed",
        "seq",
        "live",
        "bids",
        "dead",
    )

    def __init__(self, load_id, shipper_id, book, closes_at, reserve_fen, instant_fen, sealed, seq):
        self.load_id = load_id
        self.shipper_id = shipper_id
        self.book = book
        self.closes_at = closes_at
        self.reserve_fen = reserve_fen
        self.instant_fen = instant_fen
        self.sealed = sealed
        self.seq = seq
        self.live = True
        self.bids = []
        self.dead = 0


class Bid:
    """A live bid in an open auction."""

    __slots__ = ("bid_id", "carrier_id", "auction", "price_fen", "seq", "live")

    def __init__(self, bid_id, carrier_id, auction, price_fen, seq):
        self.bid_id = bid_id
        self.carrier_id = carrier_id
        self.auction = auction
        self.price_fen = price_fen
        self.seq = seq
        self.live = True
