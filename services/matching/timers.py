"""The engine's timers: expiries of resting orders and closes of auctions.

Two heaps, because the two kinds fall due differently: a market load or an offer
expires once its pickup_to / available_to is *before* now, an auction closes once
closes_at is *at or before* now. With one heap an expiry whose deadline equals now would
sit on top, not yet due, and hide the due closes under it. What fires before one command
is merged back into one list in (deadline, seq) order, the order DESIGN names; seq is
unique, so nothing after it is ever compared.

Expiry entries are `(deadline, seq, order id)`: ints and a string only, so the cyclic
garbage collector untracks each entry the first time it sees it and never walks the
(large) expiry heap again. The order is found again through the engine's `loads` and
`offers` dicts; an entry whose id no longer names a live order with that seq is dead (the
order traded, was cancelled, or its id was reused). Close entries are few (one per open
auction) and keep `(closes_at, seq, Auction)`.

Cancellation is lazy: an order that leaves the market early keeps its entry; firing
skips it. `dead` counts such entries and the heaps are rebuilt when they outnumber the
live ones, which bounds memory.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from services.matching.orders import Auction

_DEAD_MIN = 1024


class Timers:
    __slots__ = ("expiries", "closes", "dead", "loads", "offers")
    # Typed for a compiler (mypyc), ignored by CPython.
    expiries: list[tuple[int, int, str]]
    closes: list[tuple[int, int, Auction]]
    dead: int
    loads: dict
    offers: dict

    def __init__(self, loads: dict | None = None, offers: dict | None = None) -> None:
        self.expiries = []  # (deadline, seq, load_id | offer_id): due when deadline < now
        self.closes = []  # (closes_at, seq, Auction): due when closes_at <= now
        self.dead = 0
        # The engine's id -> order dicts (shared, never copied): how an entry finds its
        # order again.
        self.loads = {} if loads is None else loads
        self.offers = {} if offers is None else offers

    def add_expiry(self, deadline: int, seq: int, ref: str) -> None:
        heappush(self.expiries, (deadline, seq, ref))

    def add_close(self, closes_at: int, seq: int, auction: Auction) -> None:
        heappush(self.closes, (closes_at, seq, auction))

    def due(self, now: int) -> bool:
        """Whether anything may fire at `now` (dead entries included: cheap to check)."""
        e = self.expiries
        c = self.closes
        return bool((e and e[0][0] < now) or (c and c[0][0] <= now))

    def _order(self, entry: tuple[int, int, str]):  # -> Load | Offer | None
        """The live order an expiry entry stands for, or None if the entry is dead."""
        _, seq, ref = entry
        o = self.offers.get(ref)
        if o is not None and o.seq == seq:
            return o
        o = self.loads.get(ref)
        if o is not None and o.seq == seq:
            return o
        return None

    def pop_due(self, now: int) -> list:
        """The live orders due at `now`, in (deadline, seq) order, taken off the heaps."""
        fired: list[tuple] = []
        e = self.expiries
        order_of = self._order
        while e and e[0][0] < now:
            entry = heappop(e)
            order = order_of(entry)
            if order is not None:
                fired.append((entry[0], entry[1], order))
            else:
                self.dead -= 1
        n_expiries = len(fired)
        c = self.closes
        while c and c[0][0] <= now:
            close = heappop(c)
            if close[2].live:
                fired.append(close)
            else:
                self.dead -= 1
        if 0 < n_expiries < len(fired):
            fired.sort(key=_deadline_seq)
        return [entry[2] for entry in fired]

    def forget(self) -> None:
        """One timed order left the market early: its entry is now dead weight."""
        self.dead += 1
        if self.dead > _DEAD_MIN and self.dead * 2 > len(self.expiries) + len(self.closes):
            order_of = self._order
            self.expiries = [t for t in self.expiries if order_of(t) is not None]
            self.closes = [t for t in self.closes if t[2].live]
            heapify(self.expiries)
            heapify(self.closes)
            self.dead = 0


def _deadline_seq(entry: tuple) -> tuple[int, int]:
    return entry[0], entry[1]
