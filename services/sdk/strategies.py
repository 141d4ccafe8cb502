"""Bidding strategies of `wlex carrier run`, pure: frames in, bids out.

A strategy sees the stream's event frames and answers the bids to place as
(load_id, price_fen) pairs; the runner sends them. Own bids are told apart from the
public best-price updates by their data: the carrier's own bid.accepted carries
carrier_id, the others' only {load_id, best_fen}.
"""

from __future__ import annotations

from typing import Any

Bid = tuple[str, int]
_GONE = ("auction.closed", "order.cancelled", "order.expired", "deal.made")


class Strategy:
    def on_event(self, frame: dict[str, Any]) -> list[Bid]:
        raise NotImplementedError


class Undercut(Strategy):
    """On open auctions: bid the best price minus step_fen while that stays at or above
    floor_fen, and never against its own best bid. An auction without bids yet (and a
    sealed one, once) gets start_fen, when given."""

    def __init__(self, step_fen: int, floor_fen: int, start_fen: int | None = None) -> None:
        if step_fen <= 0 or floor_fen <= 0:
            raise ValueError("step_fen and floor_fen are positive")
        self.step_fen = step_fen
        self.floor_fen = floor_fen
        self.start_fen = start_fen
        self.best: dict[str, int | None] = {}  # open auctions we follow: best price so far
        self.mine: dict[str, int] = {}  # our live price per load

    def on_event(self, frame: dict[str, Any]) -> list[Bid]:
        event = frame["event"]
        t, data = event["type"], event["data"]
        if t == "auction.opened":
            self.best[data["load_id"]] = None
            if self.start_fen is not None and self.start_fen >= self.floor_fen:
                return [(data["load_id"], self.start_fen)]
            return []
        if t == "bid.accepted":
            load_id = data["load_id"]
            if load_id not in self.best:
                return []
            if "carrier_id" in data:  # our own bid
                self.mine[load_id] = data["price_fen"]
            if data.get("best_fen") is None:
                return []  # sealed: nothing to undercut
            self.best[load_id] = data["best_fen"]
            if self.mine.get(load_id) == data["best_fen"]:
                return []  # we hold the best bid
            price = data["best_fen"] - self.step_fen
            return [(load_id, price)] if price >= self.floor_fen else []
        if t in _GONE:
            load_id = data.get("load_id") or data.get("ref_id")
            self.best.pop(load_id, None)
            self.mine.pop(load_id, None)
        return []


class Fixed(Strategy):
    """One bid of price_fen on every auction that opens, unless the public best is
    already at or below it."""

    def __init__(self, price_fen: int) -> None:
        if price_fen <= 0:
            raise ValueError("price_fen is positive")
        self.price_fen = price_fen
        self.done: set[str] = set()

    def on_event(self, frame: dict[str, Any]) -> list[Bid]:
        event = frame["event"]
        if event["type"] != "auction.opened":
            return []
        load_id = event["data"]["load_id"]
        if load_id in self.done:
            return []
        self.done.add(load_id)
        return [(load_id, self.price_fen)]


STRATEGIES = ("undercut", "fixed")
