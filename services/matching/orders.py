"""The resting orders of the engine: plain __slots__ records, nothing more.

A resting order is touched on every scan of its book, so it is a slotted object (no
per-instance dict, attribute access at C speed) holding only what matching, the events
and the snapshot need. `live` turns False the moment the order leaves the market
(traded, cancelled, expired, closed); the book levels and the timer heaps drop such
entries lazily, so removal never searches a queue.
"""

from __future__ import annotations

# Type checkers (and mypyc) treat a name TYPE_CHECKING as true; at run time the import
# below never happens, so orders and books, which point at each other, import no cycle.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from services.matching.book import Book


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
    # The annotations say what each slot holds; a compiler (mypyc, see
    # loadtests/bench_core_mypyc.py) turns them into native fields. CPython ignores them.
    load_id: str
    shipper_id: str
    book: Book
    weight_kg: int
    volume_dm3: int
    pickup_from: int
    pickup_to: int
    limit_fen: int
    seq: int
    live: bool

    def __init__(
        self,
        load_id: str,
        shipper_id: str,
        book: Book,
        weight_kg: int,
        volume_dm3: int,
        pickup_from: int,
        pickup_to: int,
        limit_fen: int,
        seq: int,
    ) -> None:
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
    offer_id: str
    carrier_id: str
    book: Book
    remaining_kg: int
    remaining_dm3: int
    available_from: int
    available_to: int
    ask_fen: int
    consolidate: bool
    seq: int
    live: bool

    def __init__(
        self,
        offer_id: str,
        carrier_id: str,
        book: Book,
        remaining_kg: int,
        remaining_dm3: int,
        available_from: int,
        available_to: int,
        ask_fen: int,
        consolidate: bool,
        seq: int,
    ) -> None:
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
    load_id: str
    shipper_id: str
    book: Book
    closes_at: int
    reserve_fen: int | None
    instant_fen: int | None
    sealed: bool
    seq: int
    live: bool
    bids: list[tuple[int, int, Bid]]
    dead: int

    def __init__(
        self,
        load_id: str,
        shipper_id: str,
        book: Book,
        closes_at: int,
        reserve_fen: int | None,
        instant_fen: int | None,
        sealed: bool,
        seq: int,
    ) -> None:
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
    bid_id: str
    carrier_id: str
    auction: Auction
    price_fen: int
    seq: int
    live: bool

    def __init__(
        self, bid_id: str, carrier_id: str, auction: Auction, price_fen: int, seq: int
    ) -> None:
        self.bid_id = bid_id
        self.carrier_id = carrier_id
        self.auction = auction
        self.price_fen = price_fen
        self.seq = seq
        self.live = True
