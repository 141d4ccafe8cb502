"""What the simulation saw, counted: the progress line and the summary (pure).

Shippers count what they posted and how their loads ended (read back with GET); carriers
count their deals from the stream and what they drove and were paid. The two views meet:
every load a shipper sees dealt is a deal some carrier saw on its stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.sim.pricing import fen_text

MATCHED = frozenset({"dealt", "picked_up", "delivered", "disputed", "settled", "refunded"})


@dataclass
class Tally:
    # shippers
    posted: int = 0
    auctions: int = 0
    refused: Counter = field(default_factory=Counter)  # by the gateway at POST (4xx reason)
    matched: int = 0  # loads that found a carrier
    rejected: Counter = field(default_factory=Counter)  # by the exchange (reject_reason)
    cancelled: int = 0
    expired: int = 0
    cancels_sent: int = 0
    deposited_fen: int = 0
    # carriers
    offers: int = 0
    bids: int = 0
    bids_refused: Counter = field(default_factory=Counter)  # by reason
    offers_refused: Counter = field(default_factory=Counter)
    deals: int = 0
    deal_value_fen: int = 0
    picked_up: int = 0
    delivered: int = 0
    settled: int = 0
    settled_price_fen: int = 0
    fees_fen: int = 0
    payout_fen: int = 0
    errors: Counter = field(default_factory=Counter)  # requests that failed for good

    def resolve(self, load: dict[str, Any]) -> None:
        """Count a shipper's load that left requested/open, by its status."""
        status = load["status"]
        if status in MATCHED:
            self.matched += 1
        elif status == "rejected":
            self.rejected[load.get("reject_reason") or "unknown"] += 1
        elif status == "cancelled":
            self.cancelled += 1
        elif status == "expired":
            self.expired += 1

    def settle(self, deal: dict[str, Any]) -> None:
        """Count a deal of a carrier whose escrow was paid out (GET /v1/deals/{id})."""
        settlement = deal["settlement"]
        self.settled += 1
        self.settled_price_fen += deal["price_fen"]
        self.fees_fen += settlement["fee_fen"] or 0
        self.payout_fen += settlement["payout_fen"] or 0

    def line(self, elapsed_s: float) -> str:
        """The progress line: one line, the figures a watcher wants."""
        return (
            f"[{elapsed_s:5.0f} s] loads {self.posted} posted, {self.deals} deals, "
            f"{self.delivered} delivered, {self.settled} settled, "
            f"{sum(self.rejected.values())} rejected, {self.cancelled} cancelled, "
            f"{self.expired} expired | bids {self.bids}, offers {self.offers} | "
            f"fees {fen_text(self.fees_fen)} yuan"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "loads_posted": self.posted,
            "auctions": self.auctions,
            "refused_by_gateway": dict(self.refused),
            "loads_matched": self.matched,
            "rejected": dict(self.rejected),
            "cancelled": self.cancelled,
            "expired": self.expired,
            "offers": self.offers,
            "offers_refused": dict(self.offers_refused),
            "bids": self.bids,
            "bids_refused": dict(self.bids_refused),
            "deals": self.deals,
            "deal_value_fen": self.deal_value_fen,
            "picked_up": self.picked_up,
            "delivered": self.delivered,
            "settled": self.settled,
            "settled_price_fen": self.settled_price_fen,
            "fees_fen": self.fees_fen,
            "payout_fen": self.payout_fen,
            "deposited_fen": self.deposited_fen,
            "errors": dict(self.errors),
        }
