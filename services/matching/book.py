"""One lane's order book: resting offers by lowest ask, resting market loads by highest
limit, each side as sorted price levels of FIFO queues.

Why this layout: matching asks "best price first, earliest first, but only if it fits".
The best-priced order may not be eligible (too heavy, windows apart), so the scan walks
price levels in order and orders within a level in arrival order, skipping what does
not fit. A heap cannot be walked in order without popping; sorted levels can. A level of
one order is that order itself (freight prices are continuous, so most levels are: no
one-element list to allocate, keep and have the garbage collector walk). A level is
a list while it is short and a deque once it reaches LONG_LEVEL orders: an empty deque
costs ~600 bytes (one 64-slot block), which would dominate a book of sparse prices where
most levels hold one or two orders, while deleting the front of a short list is a tiny
memmove and a long level still lets its earliest order leave in O(1). The level prices
are one sorted list of ints (bisect to insert, a C memmove to delete), so finding the
best level is an index.

Removal is lazy: an order that leaves from the middle of a queue is only flagged dead
(`live = False`) and counted in `garbage`; scans skip it and pop it when it reaches the
front. When garbage outgrows the live orders the book is compacted, so memory stays
within twice the live orders whatever the cancel pattern.

Worst case: a scan visits every resting order on the side it walks when none of the
better-priced ones fits (e.g. one light truck against a book of heavy loads), so a
command costs O(resting orders of its lane) then; the common case (the best order fits)
is O(1) plus the level bookkeeping.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

from services.matching.orders import Load, Offer

# Compact a book when its dead entries exceed both this and its live orders.
_GARBAGE_MIN = 64
# A level becomes a deque when it grows to this many orders (see the module doc).
LONG_LEVEL = 32


class Book:
    __slots__ = (
        "key",
        "origin",
        "destination",
        "vehicle_class",
        "offer_prices",
        "offer_levels",
        "load_prices",
        "load_levels",
        "size",
        "garbage",
    )
    # Typed for a compiler (mypyc), ignored by CPython. A level is an order (a level of
    # one), a list or a deque of orders: the level dicts' values are left untyped.
    key: str
    origin: str
    destination: str
    vehicle_class: str
    offer_prices: list[int]
    offer_levels: dict
    load_prices: list[int]
    load_levels: dict
    size: int
    garbage: int

    def __init__(self, key: str, origin: str, destination: str, vehicle_class: str) -> None:
        self.key = key
        self.origin = origin
        self.destination = destination
        self.vehicle_class = vehicle_class
        self.offer_prices = []  # ascending asks with a non-empty level
        self.offer_levels = {}  # ask_fen -> Offer (a level of one) | list | deque
        self.load_prices = []  # ascending limits; walked from the top
        self.load_levels = {}  # limit_fen -> Load | list | deque, in arrival order
        self.size = 0  # live resting orders, both sides
        self.garbage = 0  # dead entries still inside the queues

    def lane(self) -> dict[str, str]:
        """The lane object as events carry it (a fresh dict: events never share state)."""
        return {
            "origin": self.origin,
            "destination": self.destination,
            "vehicle_class": self.vehicle_class,
        }

    # -- resting ---------------------------------------------------------------------

    def add_offer(self, offer: Offer) -> None:
        levels = self.offer_levels
        price = offer.ask_fen
        level = levels.get(price)
        if level is None:
            levels[price] = offer  # a level of one is the order itself
            insort(self.offer_prices, price)
        elif type(level) is Offer:
            levels[price] = [level, offer]
        else:
            level.append(offer)
            if len(level) == LONG_LEVEL and type(level) is list:
                levels[price] = deque(level)
        self.size += 1

    def add_load(self, load: Load) -> None:
        levels = self.load_levels
        price = load.limit_fen
        level = levels.get(price)
        if level is None:
            levels[price] = load
            insort(self.load_prices, price)
        elif type(level) is Load:
            levels[price] = [level, load]
        else:
            level.append(load)
            if len(level) == LONG_LEVEL and type(level) is list:
                levels[price] = deque(level)
        self.size += 1

    def remove_offer(self, offer: Offer) -> None:
        """Take a live offer out of the book (it traded out, was cancelled or expired)."""
        offer.live = False
        self.size -= 1
        self._unlink(offer, offer.ask_fen, self.offer_levels, self.offer_prices)

    def remove_load(self, load: Load) -> None:
        load.live = False
        self.size -= 1
        self._unlink(load, load.limit_fen, self.load_levels, self.load_prices)

    def _unlink(self, order, price: int, levels: dict, prices: list[int]) -> None:
        level = levels[price]
        if level is order:  # a level of one
            del levels[price]
            del prices[bisect_left(prices, price)]
            return
        if level[0] is order:
            # Pop it and the dead run behind it, so a level's front is always live.
            if type(level) is list:
                n = len(level)
                i = 1
                while i < n and not level[i].live:
                    i += 1
                del level[:i]
                self.garbage -= i - 1
            else:
                level.popleft()
                while level and not level[0].live:
                    level.popleft()
                    self.garbage -= 1
            if not level:
                del levels[price]
                del prices[bisect_left(prices, price)]
        else:
            self.garbage += 1
            if self.garbage > _GARBAGE_MIN and self.garbage > self.size:
                self.compact()

    def compact(self) -> None:
        """Drop every dead entry; arrival order within each level is kept."""
        sides: tuple[tuple[dict, list[int]], ...] = (
            (self.offer_levels, self.offer_prices),
            (self.load_levels, self.load_prices),
        )
        for levels, prices in sides:
            for price in list(prices):
                level = levels[price]
                if type(level) is Offer or type(level) is Load:
                    continue  # a level of one is always live
                level = [o for o in level if o.live]
                if len(level) >= LONG_LEVEL:
                    levels[price] = deque(level)
                elif level:
                    levels[price] = level
                else:
                    del levels[price]
                    prices.remove(price)
        self.garbage = 0

    # -- matching --------------------------------------------------------------------

    def best_offer(
        self, weight_kg: int, volume_dm3: int, pickup_from: int, pickup_to: int, limit_fen: int
    ) -> Offer | None:
        """The eligible resting offer with the lowest ask, earliest first, or None."""
        prices = self.offer_prices
        levels = self.offer_levels
        for price in prices:
            if price > limit_fen:
                return None
            level = levels[price]
            if type(level) is Offer:
                if (
                    weight_kg <= level.remaining_kg
                    and volume_dm3 <= level.remaining_dm3
                    and level.available_from <= pickup_to
                    and pickup_from <= level.available_to
                ):
                    return level
                continue
            for offer in level:
                if (
                    offer.live
                    and weight_kg <= offer.remaining_kg
                    and volume_dm3 <= offer.remaining_dm3
                    and offer.available_from <= pickup_to
                    and pickup_from <= offer.available_to
                ):
                    return offer
        return None

    def best_loads(
        self, ask: int, rem_kg: int, rem_dm3: int, avail_from: int, avail_to: int, consolidate: bool
    ) -> list[Load]:
        """The resting market loads an offer takes (ask, remainders, availability), in
        the order it takes them.

        Each time the taker picks the eligible load with the highest limit, earliest
        first. Its remainders only shrink, so a load that does not fit now never fits
        later: one walk down the levels gives the same loads as repeated "best" searches.
        The caller updates the offer and removes the loads.
        """
        prices = self.load_prices
        levels = self.load_levels
        taken: list[Load] = []
        i = len(prices) - 1
        while i >= 0:
            price = prices[i]
            if price < ask:
                break
            level = levels[price]
            if type(level) is Load:
                level = (level,)
            for load in level:
                if (
                    load.live
                    and load.weight_kg <= rem_kg
                    and load.volume_dm3 <= rem_dm3
                    and load.pickup_from <= avail_to
                    and avail_from <= load.pickup_to
                ):
                    taken.append(load)
                    if not consolidate:
                        return taken
                    rem_kg -= load.weight_kg
                    rem_dm3 -= load.volume_dm3
                    if rem_kg <= 0 or rem_dm3 <= 0:
                        return taken
            i -= 1
        return taken
