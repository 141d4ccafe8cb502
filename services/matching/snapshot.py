"""Snapshot encoding of the engine: orjson bytes of the live state, nothing else.

Only what decides future outcomes is written: the clock, the arrival counter and every
live order with its arrival seq, in seq order. Lazily deleted entries, garbage counters
and empty books are not state (nothing observable depends on them), so they are left
out; restoring re-inserts the orders in seq order, which rebuilds each price level's
FIFO and the timer heaps exactly. Hence snapshot(restore(s)) == s, and two engines fed
the same log give the same bytes.

Layout (format 1), every order a JSON array to keep large books small:
  {"format": 1, "now": ms, "seq": n,
   "loads":    [[seq, load_id, shipper_id, origin, destination, vehicle_class,
                 weight_kg, volume_dm3, pickup_from, pickup_to, limit_fen], ...],
   "offers":   [[seq, offer_id, carrier_id, origin, destination, vehicle_class,
                 remaining_kg, remaining_dm3, available_from, available_to, ask_fen,
                 consolidate], ...],
   "auctions": [[seq, load_id, shipper_id, origin, destination, vehicle_class,
                 closes_at, reserve_fen, instant_fen, sealed,
                 [[seq, bid_id, carrier_id, price_fen], ...]], ...]}
"""

from __future__ import annotations

from heapq import heapify

import orjson

from services.matching.orders import Auction, Bid, Load, Offer

FORMAT = 1


def _seq(order):
    return order.seq


def dump(engine) -> bytes:
    loads = []
    auctions = []
    for order in sorted(engine.loads.values(), key=_seq):
        b = order.book
        if type(order) is Load:
            loads.append(
                [
                    order.seq,
                    order.load_id,
                    order.shipper_id,
                    b.origin,
                    b.destination,
                    b.vehicle_class,
                    order.weight_kg,
                    order.volume_dm3,
                    order.pickup_from,
                    order.pickup_to,
                    order.limit_fen,
                ]
            )
        else:
            bids = sorted((e[2] for e in order.bids if e[2].live), key=_seq)
            auctions.append(
                [
                    order.seq,
                    order.load_id,
                    order.shipper_id,
                    b.origin,
                    b.destination,
                    b.vehicle_class,
                    order.closes_at,
                    order.reserve_fen,
                    order.instant_fen,
                    order.sealed,
                    [[bid.seq, bid.bid_id, bid.carrier_id, bid.price_fen] for bid in bids],
                ]
            )
    offers = []
    for o in sorted(engine.offers.values(), key=_seq):
        b = o.book
        offers.append(
            [
                o.seq,
                o.offer_id,
                o.carrier_id,
                b.origin,
                b.destination,
                b.vehicle_class,
                o.remaining_kg,
                o.remaining_dm3,
                o.available_from,
                o.available_to,
                o.ask_fen,
                o.consolidate,
            ]
        )
    return orjson.dumps(
        {
            "format": FORMAT,
            "now": engine.now,
            "seq": engine.seq,
            "loads": loads,
            "offers": offers,
            "auctions": auctions,
        }
    )


def load(engine, data: bytes) -> None:
    state = orjson.loads(data)
    if state.get("format") != FORMAT:
        raise ValueError(f"unknown matching snapshot format {state.get('format')!r}")
    engine.now = state["now"]
    engine.seq = state["seq"]
    expiries = []
    closes = []
    # Loads and auctions share one id space; insert them in seq order so the dict holds
    # them in arrival order, as it did in the engine that wrote the snapshot.
    posted = [(row[0], False, row) for row in state["loads"]]
    posted += [(row[0], True, row) for row in state["auctions"]]
    posted.sort(key=lambda t: t[0])
    for seq, is_auction, row in posted:
        book = engine._book((row[3], row[4], row[5], f"{row[3]}>{row[4]}>{row[5]}"))
        if is_auction:
            a = Auction(row[1], row[2], book, row[6], row[7], row[8], row[9], seq)
            for bseq, bid_id, carrier_id, price_fen in row[10]:
                bid = Bid(bid_id, carrier_id, a, price_fen, bseq)
                a.bids.append((price_fen, bseq, bid))
                engine.bids[bid_id] = bid
            heapify(a.bids)
            engine.loads[a.load_id] = a
            closes.append((a.closes_at, seq, a))
        else:
            load_ = Load(row[1], row[2], book, row[6], row[7], row[8], row[9], row[10], seq)
            book.add_load(load_)
            engine.loads[load_.load_id] = load_
            expiries.append((load_.pickup_to, seq, load_.load_id))
    for row in state["offers"]:
        book = engine._book((row[3], row[4], row[5], f"{row[3]}>{row[4]}>{row[5]}"))
        offer = Offer(
            row[1], row[2], book, row[6], row[7], row[8], row[9], row[10], row[11], row[0]
        )
        book.add_offer(offer)
        engine.offers[offer.offer_id] = offer
        expiries.append((offer.available_to, offer.seq, offer.offer_id))
    heapify(expiries)
    heapify(closes)
    engine.timers.expiries = expiries
    engine.timers.closes = closes
