"""The matching engine: a pure, deterministic function of its input log.

`Engine.process(commands)` takes envelope dicts in log order and returns the outcome
envelopes in order; `snapshot()` / `Engine.restore()` carry the whole state across a
restart. No clock, no I/O, no randomness: time is the `ts` of the commands, so the same
log always gives the same events, byte for byte once encoded. The rules are DESIGN's
"Matching rules (the core)"; docs/matching.md restates them and records every choice
made where the brief was silent.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush

from orjson import dumps

from services.common.reasons import (
    ABOVE_RESERVE,
    DUPLICATE_ID,
    EXPIRED,
    INVALID,
    NOT_AUCTION,
    NOT_IMPROVING,
    NOT_OWNER,
    UNKNOWN_ORDER,
)
from services.matching import snapshot as _snapshot
from services.matching.book import Book
from services.matching.commands import (
    INT_MAX,
    LaneParts,
    is_time,
    parse_bid_place,
    parse_load_post,
    parse_offer_post,
    parse_pair,
    ref_of,
)
from services.matching.orders import Auction, Bid, Load, Offer
from services.matching.timers import Timers

# The field a command names as its ref_id when it is refused.
REF_FIELD: dict[str, str | None] = {
    "load.post": "load_id",
    "offer.post": "offer_id",
    "bid.place": "bid_id",
    "load.cancel": "load_id",
    "offer.cancel": "offer_id",
    "bid.withdraw": "bid_id",
    "clock.tick": None,
}

# The participant-id cache is emptied when it reaches this size (a bound, not a policy:
# far more participants than the exchange registers).
_NAMES_MAX = 1 << 17

# Event id suffixes ":0", ":1", ...: a table lookup is twice as fast as formatting.
_NIX = 256
_IX = tuple(f":{i}" for i in range(_NIX))

# An auction's bid heap is rebuilt when withdrawn entries exceed this and the live ones.
_BIDS_DEAD_MIN = 32


class Engine:
    """Matches commands of many lanes. Deterministic: same log in, same events out."""

    __slots__ = ("now", "seq", "books", "loads", "offers", "bids", "timers", "_names", "_handlers")
    # Typed for a compiler (mypyc, loadtests/bench_core_mypyc.py); CPython ignores them.
    # An unannotated parameter (a command's data or key) is any object.
    now: int
    seq: int
    books: dict[str, Book]
    loads: dict  # load_id -> Load | Auction
    offers: dict[str, Offer]
    bids: dict[str, Bid]
    timers: Timers
    _names: dict[str, str]
    _handlers: dict[str, Callable[..., None]]

    def __init__(self) -> None:
        self.now = 0  # epoch ms: the max ts seen so far
        self.seq = 0  # arrival order of accepted orders (loads, offers, bids)
        self.books = {}  # lane key -> Book
        self.loads = {}  # load_id -> Load (resting market load) | Auction (open)
        self.offers = {}  # offer_id -> Offer (resting)
        self.bids = {}  # bid_id -> Bid (live, in an open auction)
        self.timers = Timers(self.loads, self.offers)
        # One string object per participant id: a shipper or carrier with thousands of
        # resting orders then holds its id once, not once per order (~50 bytes each).
        # Not state: only object identity depends on it, so it is not in the snapshot.
        self._names = {}
        self._handlers = {
            "load.post": self._load_post,
            "offer.post": self._offer_post,
            "bid.place": self._bid_place,
            "load.cancel": self._load_cancel,
            "offer.cancel": self._offer_cancel,
            "bid.withdraw": self._bid_withdraw,
            "clock.tick": _clock_tick,
        }

    # -- the log ---------------------------------------------------------------------

    def process(self, commands: list) -> list[dict]:
        """Handle `commands` in order; return every outcome envelope in order."""
        out: list[dict] = []
        handlers = self._handlers
        timers = self.timers
        for cmd in commands:
            base = len(out)
            # Fast path: a well-formed envelope. Indexing beats five dict.get calls; any
            # oddity (missing field, wrong type) takes the careful path below.
            try:
                cid = cmd["id"]
                ts = cmd["ts"]
                handler = handlers.get(cmd["type"])
                key = cmd["key"]
                data = cmd["data"]
            except (KeyError, TypeError):
                self._odd(cmd, out, base)
                continue
            if (
                type(cid) is not str
                or not cid
                or type(ts) is not int
                or not 0 <= ts <= INT_MAX
                or type(key) is not str
            ):
                self._odd(cmd, out, base)
                continue
            if ts > self.now:
                self.now = ts
            # Inline Timers.due: this test runs once per command.
            now = self.now
            if (timers.expiries and timers.expiries[0][0] < now) or (
                timers.closes and timers.closes[0][0] <= now
            ):
                self._fire(out, base, cid)
            if handler is None:
                _reject(out, base, cid, key, None, INVALID, now)
            else:
                handler(data, out, base, cid, key)
        return out

    def process_encoded(self, commands: list) -> list[tuple[bytes | None, bytes]]:
        """`process`, each event encoded as the service writes it: (key bytes or None,
        orjson bytes). The native engine (native_engine.py) gives the same bytes."""
        return _encoded(self.process(commands))

    def process_raw(
        self, values: list, fallback, counts: dict | None = None
    ) -> list[tuple[bytes | None, bytes]]:
        """Kafka record values in, as NativeEngine.process_raw: here every value goes
        through `fallback(value, index)` (decode and validate; None: a dead letter).
        counts, if given, gets the number of events of each type added."""
        commands = [fallback(value, i) for i, value in enumerate(values)]
        events = self.process([c for c in commands if c is not None])
        if counts is not None:
            for e in events:
                counts[e["type"]] = counts.get(e["type"], 0) + 1
        return _encoded(events)

    def _odd(self, cmd, out, base):  # unannotated: a command may be anything
        """A command whose envelope is incomplete or mistyped (the careful path)."""
        if type(cmd) is not dict:
            _reject(out, base, "", None, None, INVALID, self.now)
            return
        cid = cmd.get("id")
        ts = cmd.get("ts")
        typ = cmd.get("type")
        key = cmd.get("key")
        if type(key) is not str:
            key = None
        if type(cid) is not str or not cid or not is_time(ts):
            # Without a valid ts the command cannot move the clock or fire timers:
            # a garbled envelope must not expire anybody's orders.
            field = REF_FIELD.get(typ) if type(typ) is str else None
            ref = ref_of(cmd.get("data"), field) if field else None
            _reject(out, base, cid if type(cid) is str else "", key, ref, INVALID, self.now)
            return
        if ts > self.now:
            self.now = ts
        timers = self.timers
        now = self.now
        if (timers.expiries and timers.expiries[0][0] < now) or (
            timers.closes and timers.closes[0][0] <= now
        ):
            self._fire(out, base, cid)
        handler = self._handlers.get(typ) if type(typ) is str else None
        if handler is None:
            _reject(out, base, cid, key, None, INVALID, now)
        else:
            handler(cmd.get("data"), out, base, cid, key)

    def _fire(self, out: list[dict], base: int, cid: str) -> None:
        """Every timer due at now, in (deadline, arrival) order."""
        now = self.now
        for order in self.timers.pop_due(now):
            cls = type(order)
            if cls is Auction:
                self._close(order, out, base, cid, by_timer=True)
                continue
            book = order.book
            if cls is Load:
                book.remove_load(order)
                del self.loads[order.load_id]
                ref = order.load_id
            else:
                book.remove_offer(order)
                del self.offers[order.offer_id]
                ref = order.offer_id
            _emit(out, base, cid, "order.expired", now, book.key, {"ref_id": ref})

    def _book(self, parts: LaneParts) -> Book:
        book = self.books.get(parts[3])
        if book is None:
            book = self.books[parts[3]] = Book(parts[3], parts[0], parts[1], parts[2])
        return book

    def _name(self, name: str) -> str:
        names = self._names
        interned = names.get(name)
        if interned is None:
            if len(names) >= _NAMES_MAX:
                names.clear()
            interned = names[name] = name
        return interned

    # -- commands --------------------------------------------------------------------

    def _load_post(self, data, out: list[dict], base: int, cid: str, key) -> None:
        now = self.now
        p = parse_load_post(data)
        if p is None:
            return _reject(out, base, cid, key, ref_of(data, "load_id"), INVALID, now)
        (
            load_id,
            shipper_id,
            parts,
            weight_kg,
            volume_dm3,
            pickup_from,
            pickup_to,
            limit_fen,
            auction,
        ) = p
        if (pickup_to < now) if auction is None else (auction[0] <= now):
            return _reject(out, base, cid, key, load_id, EXPIRED, now)
        if load_id in self.loads:
            return _reject(out, base, cid, key, load_id, DUPLICATE_ID, now)
        book = self.books.get(parts[3])
        if book is None:
            book = self._book(parts)
        names = self._names
        interned = names.get(shipper_id)
        shipper_id = self._name(shipper_id) if interned is None else interned
        self.seq = seq = self.seq + 1
        if auction is not None:
            closes_at, reserve_fen, instant_fen, sealed = auction
            a = Auction(load_id, shipper_id, book, closes_at, reserve_fen, instant_fen, sealed, seq)
            self.loads[load_id] = a
            self.timers.add_close(closes_at, seq, a)
            _emit(
                out,
                base,
                cid,
                "auction.opened",
                now,
                book.key,
                {"load_id": load_id, "closes_at": closes_at, "sealed": sealed},
            )
            return None
        offer = (
            book.best_offer(weight_kg, volume_dm3, pickup_from, pickup_to, limit_fen)
            if book.offer_prices
            else None
        )
        if offer is not None:
            offer.remaining_kg -= weight_kg
            offer.remaining_dm3 -= volume_dm3
            if not (offer.consolidate and offer.remaining_kg > 0 and offer.remaining_dm3 > 0):
                book.remove_offer(offer)
                del self.offers[offer.offer_id]
                self.timers.forget()
            out.append(
                {
                    "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
                    "type": "deal.made",
                    "v": 1,
                    "ts": now,
                    "key": book.key,
                    "source": "matching",
                    "cause": cid,
                    "data": {
                        "deal_id": "deal:" + load_id,
                        "load_id": load_id,
                        "offer_id": offer.offer_id,
                        "bid_id": None,
                        "shipper_id": shipper_id,
                        "carrier_id": offer.carrier_id,
                        "price_fen": offer.ask_fen,
                        "lane": {
                            "origin": book.origin,
                            "destination": book.destination,
                            "vehicle_class": book.vehicle_class,
                        },
                    },
                }
            )
            return None
        load = Load(
            load_id, shipper_id, book, weight_kg, volume_dm3, pickup_from, pickup_to, limit_fen, seq
        )
        book.add_load(load)
        self.loads[load_id] = load
        self.timers.add_expiry(pickup_to, seq, load_id)
        out.append(
            {
                "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
                "type": "load.rested",
                "v": 1,
                "ts": now,
                "key": book.key,
                "source": "matching",
                "cause": cid,
                "data": {"load_id": load_id},
            }
        )
        return None

    def _offer_post(self, data, out: list[dict], base: int, cid: str, key) -> None:
        now = self.now
        p = parse_offer_post(data)
        if p is None:
            return _reject(out, base, cid, key, ref_of(data, "offer_id"), INVALID, now)
        (
            offer_id,
            carrier_id,
            parts,
            capacity_kg,
            capacity_dm3,
            available_from,
            available_to,
            ask_fen,
            consolidate,
        ) = p
        if available_to < now:
            return _reject(out, base, cid, key, offer_id, EXPIRED, now)
        if offer_id in self.offers:
            return _reject(out, base, cid, key, offer_id, DUPLICATE_ID, now)
        book = self.books.get(parts[3])
        if book is None:
            book = self._book(parts)
        names = self._names
        interned = names.get(carrier_id)
        carrier_id = self._name(carrier_id) if interned is None else interned
        self.seq = seq = self.seq + 1
        rem_kg = capacity_kg
        rem_dm3 = capacity_dm3
        # The Offer object is built only if it rests: most takers trade out at once.
        taken = (
            book.best_loads(
                ask_fen, capacity_kg, capacity_dm3, available_from, available_to, consolidate
            )
            if book.load_prices
            else None
        )
        if taken:
            loads = self.loads
            timers = self.timers
            bkey = book.key
            for load in taken:
                rem_kg -= load.weight_kg
                rem_dm3 -= load.volume_dm3
                book.remove_load(load)
                del loads[load.load_id]
                timers.forget()
                out.append(
                    {
                        "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
                        "type": "deal.made",
                        "v": 1,
                        "ts": now,
                        "key": bkey,
                        "source": "matching",
                        "cause": cid,
                        "data": {
                            "deal_id": "deal:" + load.load_id,
                            "load_id": load.load_id,
                            "offer_id": offer_id,
                            "bid_id": None,
                            "shipper_id": load.shipper_id,
                            "carrier_id": carrier_id,
                            "price_fen": load.limit_fen,
                            "lane": {
                                "origin": book.origin,
                                "destination": book.destination,
                                "vehicle_class": book.vehicle_class,
                            },
                        },
                    }
                )
            if not (consolidate and rem_kg > 0 and rem_dm3 > 0):
                return None
        offer = Offer(
            offer_id,
            carrier_id,
            book,
            rem_kg,
            rem_dm3,
            available_from,
            available_to,
            ask_fen,
            consolidate,
            seq,
        )
        book.add_offer(offer)
        self.offers[offer_id] = offer
        self.timers.add_expiry(available_to, seq, offer_id)
        out.append(
            {
                "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
                "type": "offer.rested",
                "v": 1,
                "ts": now,
                "key": book.key,
                "source": "matching",
                "cause": cid,
                "data": {
                    "offer_id": offer_id,
                    "remaining_kg": rem_kg,
                    "remaining_dm3": rem_dm3,
                },
            }
        )
        return None

    def _bid_place(self, data, out: list[dict], base: int, cid: str, key) -> None:
        now = self.now
        p = parse_bid_place(data)
        if p is None:
            return _reject(out, base, cid, key, ref_of(data, "bid_id"), INVALID, now)
        bid_id, load_id, carrier_id, price_fen = p
        if bid_id in self.bids:
            return _reject(out, base, cid, key, bid_id, DUPLICATE_ID, now)
        a = self.loads.get(load_id)
        if a is None:
            return _reject(out, base, cid, key, bid_id, UNKNOWN_ORDER, now)
        if type(a) is not Auction:
            return _reject(out, base, cid, key, bid_id, NOT_AUCTION, now)
        if a.reserve_fen is not None and price_fen > a.reserve_fen:
            return _reject(out, base, cid, key, bid_id, ABOVE_RESERVE, now)
        top = _best_bid(a)
        best: int | None = None
        if top is not None:
            best = top.price_fen
            # Only an open auction shows its best bid, so only there must a bid beat it;
            # in a sealed one nobody knows what to beat, and the lowest wins at the close.
            if not a.sealed and price_fen >= best:
                return _reject(out, base, cid, key, bid_id, NOT_IMPROVING, now)
        self.seq = seq = self.seq + 1
        bid = Bid(bid_id, carrier_id, a, price_fen, seq)
        heappush(a.bids, (price_fen, seq, bid))
        self.bids[bid_id] = bid
        if a.sealed:
            best_fen = None
        else:
            best_fen = price_fen if best is None or price_fen < best else best
        _emit(
            out,
            base,
            cid,
            "bid.accepted",
            now,
            a.book.key,
            {
                "bid_id": bid_id,
                "load_id": load_id,
                "carrier_id": carrier_id,
                "price_fen": price_fen,
                "best_fen": best_fen,
            },
        )
        if a.instant_fen is not None and price_fen <= a.instant_fen:
            # Every earlier live bid is above instant_fen (else it would have closed the
            # auction), so this bid is the lowest and the close below makes its deal.
            self._close(a, out, base, cid, by_timer=False)
        return None

    def _owned(
        self,
        data,
        out: list[dict],
        base: int,
        cid: str,
        key,
        orders: dict,
        ref_field: str,
        owner_field: str,
    ):
        """(id, order) for the order a cancel or a withdrawal names in `orders`, when the
        command is well formed, the order live and the command's owner its owner (the
        order's attribute named as the owner's field); else None, the rejection
        written: invalid, unknown_order, not_owner, in that precedence."""
        now = self.now
        p = parse_pair(data, ref_field, owner_field)
        if p is None:
            return _reject(out, base, cid, key, ref_of(data, ref_field), INVALID, now)
        ref_id, owner_id = p
        order = orders.get(ref_id)
        if order is None:
            return _reject(out, base, cid, key, ref_id, UNKNOWN_ORDER, now)
        if getattr(order, owner_field) != owner_id:
            return _reject(out, base, cid, key, ref_id, NOT_OWNER, now)
        return ref_id, order

    def _load_cancel(self, data, out: list[dict], base: int, cid: str, key) -> None:
        found = self._owned(data, out, base, cid, key, self.loads, "load_id", "shipper_id")
        if found is None:
            return None
        load_id, load = found
        del self.loads[load_id]
        if type(load) is Auction:
            load.live = False
            self._drop_bids(load)
        else:
            load.book.remove_load(load)
        self.timers.forget()
        _emit(out, base, cid, "order.cancelled", self.now, load.book.key, {"ref_id": load_id})
        return None

    def _offer_cancel(self, data, out: list[dict], base: int, cid: str, key) -> None:
        found = self._owned(data, out, base, cid, key, self.offers, "offer_id", "carrier_id")
        if found is None:
            return None
        offer_id, offer = found
        del self.offers[offer_id]
        offer.book.remove_offer(offer)
        self.timers.forget()
        _emit(out, base, cid, "order.cancelled", self.now, offer.book.key, {"ref_id": offer_id})
        return None

    def _bid_withdraw(self, data, out: list[dict], base: int, cid: str, key) -> None:
        found = self._owned(data, out, base, cid, key, self.bids, "bid_id", "carrier_id")
        if found is None:
            return None
        bid_id, bid = found
        del self.bids[bid_id]
        bid.live = False
        a = bid.auction
        a.dead += 1
        if a.dead > _BIDS_DEAD_MIN and a.dead * 2 > len(a.bids):
            a.bids = [entry for entry in a.bids if entry[2].live]
            a.bids.sort()
            a.dead = 0
        _emit(out, base, cid, "order.cancelled", self.now, a.book.key, {"ref_id": bid_id})
        return None

    # -- auctions --------------------------------------------------------------------

    def _close(self, a: Auction, out: list[dict], base: int, cid: str, by_timer: bool) -> None:
        """Deal with the lowest live bid, earliest first, then auction.closed."""
        now = self.now
        a.live = False
        del self.loads[a.load_id]
        if not by_timer:
            self.timers.forget()
        key = a.book.key
        winner = _best_bid(a)
        if winner is None:
            bid_id = price_fen = None
        else:
            bid_id = winner.bid_id
            price_fen = winner.price_fen
            out.append(
                {
                    "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
                    "type": "deal.made",
                    "v": 1,
                    "ts": now,
                    "key": key,
                    "source": "matching",
                    "cause": cid,
                    "data": {
                        "deal_id": "deal:" + a.load_id,
                        "load_id": a.load_id,
                        "offer_id": None,
                        "bid_id": bid_id,
                        "shipper_id": a.shipper_id,
                        "carrier_id": winner.carrier_id,
                        "price_fen": price_fen,
                        "lane": a.book.lane(),
                    },
                }
            )
        _emit(
            out,
            base,
            cid,
            "auction.closed",
            now,
            key,
            {"load_id": a.load_id, "bid_id": bid_id, "price_fen": price_fen},
        )
        self._drop_bids(a)

    def _drop_bids(self, a: Auction) -> None:
        bids = self.bids
        for entry in a.bids:
            bid = entry[2]
            if bid.live:
                bid.live = False
                del bids[bid.bid_id]
        a.bids = []
        a.dead = 0

    # -- gauges ----------------------------------------------------------------------

    def order_counts(self) -> tuple[int, int]:
        """(resting orders, open auctions): resting market loads and offers, and auction
        loads still taking bids. For the adapter's gauges; reads, never changes."""
        # Every open auction has exactly one live entry in the closes heap, which is far
        # shorter than the loads dict (cancelled ones linger there, marked dead).
        open_auctions = sum(1 for entry in self.timers.closes if entry[2].live)
        return len(self.loads) - open_auctions + len(self.offers), open_auctions

    # -- snapshot --------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as deterministic bytes: equal states give equal bytes."""
        return _snapshot.dump(self)

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """An engine in the state `snapshot()` captured; it continues exactly as the
        original would have."""
        engine = cls()
        _snapshot.load(engine, data)
        return engine


def _best_bid(a: Auction) -> Bid | None:
    """The lowest live bid of auction `a`, earliest first, or None (pops dead tops)."""
    heap = a.bids
    while heap:
        bid = heap[0][2]
        if bid.live:
            return bid
        heappop(heap)
        a.dead -= 1
    return None


def _clock_tick(data, out: list[dict], base: int, cid: str, key) -> None:
    """A tick only moves the clock; its timers fired before it was handled."""
    return None


def _emit(out: list[dict], base: int, cid: str, typ: str, now: int, key, data: dict) -> None:
    """Append one outcome envelope of command cid (its index counted from base). The hot
    outcomes (deal.made, load.rested, offer.rested) build the same dict inline."""
    out.append(
        {
            "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
            "type": typ,
            "v": 1,
            "ts": now,
            "key": key,
            "source": "matching",
            "cause": cid,
            "data": data,
        }
    )


def _reject(
    out: list[dict], base: int, cid: str, key, ref_id: str | None, reason: str, now: int
) -> None:
    out.append(
        {
            "id": cid + _IX[i] if (i := len(out) - base) < _NIX else f"{cid}:{i}",
            "type": "order.rejected",
            "v": 1,
            "ts": now,
            "key": key,
            "source": "matching",
            "cause": cid or None,
            "data": {"ref_id": ref_id, "reason": reason},
        }
    )


def _encoded(events: list[dict]) -> list[tuple[bytes | None, bytes]]:
    """Events as the service writes them: (key bytes or None, orjson bytes)."""
    return [(e["key"].encode() if e["key"] is not None else None, dumps(e)) for e in events]
