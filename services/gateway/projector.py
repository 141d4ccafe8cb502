"""The read-model fold, pure: one event envelope in, the row changes it causes out.

`fold(envelope)` gives a Fold: the changes (small records that the adapter,
services.gateway.projection_service, turns into SQL) and `needs`, the rows that must
exist before the changes can apply. A need that is not met yet is a race, not an error:
the gateway answers 202 and writes its own `load` row only after the broker has the
command, so an outcome (say load.funded, one hop away) can be consumed before that row
commits. The adapter parks such an event and applies it once the row is there.

What the fold does not know it leaves to the rows: which of a load, offer or bid a
`ref_id` names, and which load a rejected command belonged to (by its command id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common import reasons
from services.gateway import lifecycle as lc

# ---------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class LoadStatus:
    """Move the load to status if it ranks above its present one (lifecycle.RANK)."""

    load_id: str
    status: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RefStatus:
    """ref_id names a load, an offer or a bid: move whichever it is (None: leave it)."""

    ref_id: str
    load: str | None
    offer: str | None
    bid: str | None


@dataclass(frozen=True, slots=True)
class CommandRejected:
    """The engine refused the command `cause`: reject the load or offer it posted
    (a refused cancel changes no status; it is only logged)."""

    ref_id: str
    cause: str
    reason: str


@dataclass(frozen=True, slots=True)
class Deal:
    """A deal's row, its offer's remaining capacity and its winning bid."""

    deal_id: str
    load_id: str
    shipper_id: str
    carrier_id: str
    offer_id: str | None
    bid_id: str | None
    price_fen: int
    made_ms: int


@dataclass(frozen=True, slots=True)
class BidPlaced:
    bid_id: str
    load_id: str
    carrier_id: str
    price_fen: int
    placed_ms: int


@dataclass(frozen=True, slots=True)
class OfferRested:
    offer_id: str
    remaining_kg: int
    remaining_dm3: int


@dataclass(frozen=True, slots=True)
class DealFacts:
    """Columns of the deal's row, each written once (the first event to say it wins, so
    a replay or the gateway's own earlier write is never overwritten)."""

    deal_id: str
    load_id: str
    columns: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Log:
    """Append the event to a load's log (the SSE feed). Exactly one of the three names
    the load: itself, an order id to resolve (load or bid), or a command id."""

    load_id: str | None = None
    ref_id: str | None = None
    cause: str | None = None


Change = LoadStatus | RefStatus | CommandRejected | Deal | BidPlaced | OfferRested | DealFacts | Log

# Kinds of need: the row of a load, of an offer, or of whatever ref_id names.
LOAD, OFFER, REF = "load", "offer", "ref"


@dataclass(frozen=True, slots=True)
class Fold:
    changes: list[Change] = field(default_factory=list)
    needs: tuple[tuple[str, str], ...] = ()


# Every column DealFacts may write (the adapter puts them into SQL by name).
DEAL_COLUMNS: frozenset[str] = frozenset(
    {
        "shipper_id", "carrier_id", "price_fen", "picked_up_ms", "delivered_ms",
        "proof_ref", "disputed_ms", "disputed_by", "dispute_reason", "decided_ms",
        "decided_by", "resolution", "carrier_fen", "frozen_fen", "settled_ms", "how",
        "fee_fen", "payout_fen", "refund_fen", "premium_fen", "insurer_id", "refunded_ms",
        "refunded_fen",
    }
)  # fmt: skip

# ---------------------------------------------------------------------------- the fold


def fold(env: dict[str, Any]) -> Fold:
    """The changes of one valid envelope. Types the read model does not follow give an
    empty Fold; so does anything not about a load or offer (deposits, withdrawals)."""
    handler = _HANDLERS.get(env["type"])
    if handler is not None:
        return handler(env["data"], env)
    load_id = env["data"].get("load_id")
    if isinstance(load_id, str):  # e.g. insurance's events: shown in the load's feed
        return _on_load(load_id, Log(load_id=load_id))
    return Fold()


def _on_load(load_id: str, *changes: Change) -> Fold:
    return Fold(list(changes), ((LOAD, load_id),))


def _rested(d: dict, env: dict) -> Fold:
    return _on_load(d["load_id"], LoadStatus(d["load_id"], lc.OPEN), Log(load_id=d["load_id"]))


def _deal_made(d: dict, env: dict) -> Fold:
    deal = Deal(
        d["deal_id"], d["load_id"], d["shipper_id"], d["carrier_id"], d["offer_id"],
        d["bid_id"], d["price_fen"], env["ts"],
    )  # fmt: skip
    # Not a need: the offer. A deal must never wait on its offer's row (an offer the
    # gateway did not record would hold the load's deal back); at worst the offer's
    # remaining capacity is stale.
    return _on_load(
        d["load_id"], deal, LoadStatus(d["load_id"], lc.DEALT), Log(load_id=d["load_id"])
    )


def _bid_accepted(d: dict, env: dict) -> Fold:
    bid = BidPlaced(d["bid_id"], d["load_id"], d["carrier_id"], d["price_fen"], env["ts"])
    return _on_load(d["load_id"], bid, Log(load_id=d["load_id"]))


def _auction_closed(d: dict, env: dict) -> Fold:
    # Closed without a valid bid: the load did not trade and its window for this
    # auction is over. "expired", like a market load whose pickup window closed, so a
    # shipper has one word for "ended without a deal"; settlement releases the hold
    # (hold.released reason unawarded). With a winner, deal.made came first.
    changes: list[Change] = [Log(load_id=d["load_id"])]
    if d["bid_id"] is None:
        changes.insert(0, LoadStatus(d["load_id"], lc.EXPIRED))
    return _on_load(d["load_id"], *changes)


def _offer_rested(d: dict, env: dict) -> Fold:
    rested = OfferRested(d["offer_id"], d["remaining_kg"], d["remaining_dm3"])
    return Fold([rested], ((OFFER, d["offer_id"]),))


def _ref(load: str | None, offer: str | None, bid: str | None):
    def handler(d: dict, env: dict) -> Fold:
        ref = d["ref_id"]
        return Fold([RefStatus(ref, load, offer, bid), Log(ref_id=ref)], ((REF, ref),))

    return handler


def _order_rejected(d: dict, env: dict) -> Fold:
    ref, cause, reason = d["ref_id"], env["cause"], d["reason"]
    if ref is None or cause is None:
        return Fold()
    changes: list[Change] = [Log(cause=cause)]
    # duplicate_id of our own load id means the same load.post arrived twice (a
    # retried send): the load is live, not rejected.
    if reason != reasons.DUPLICATE_ID:
        changes.insert(0, CommandRejected(ref, cause, reason))
    # Wait for the row only where the race is plausible: a load.post or offer.post
    # refused as invalid or expired. Most rejections are of bids (not_improving, ...)
    # or cancels, whose rows exist already or never will.
    needs = ((REF, ref),) if reason in (reasons.INVALID, reasons.EXPIRED) else ()
    return Fold(changes, needs)


def _load_rejected(d: dict, env: dict) -> Fold:
    # The gate's duplicate_id is a replayed load.post of a load it already holds for.
    changes: list[Change] = [Log(load_id=d["load_id"])]
    if d["reason"] != reasons.DUPLICATE_ID:
        changes.insert(0, LoadStatus(d["load_id"], lc.REJECTED, d["reason"]))
    return _on_load(d["load_id"], *changes)


def _log_only(d: dict, env: dict) -> Fold:
    return _on_load(d["load_id"], Log(load_id=d["load_id"]))


def _deal_event(status: str | None, columns):
    def handler(d: dict, env: dict) -> Fold:
        facts = DealFacts(d["deal_id"], d["load_id"], tuple(columns(d, env)))
        changes: list[Change] = [facts, Log(load_id=d["load_id"])]
        if status is not None:
            changes.insert(1, LoadStatus(d["load_id"], status))
        return _on_load(d["load_id"], *changes)

    return handler


def _settled_columns(d: dict, env: dict):
    return [
        ("shipper_id", d["shipper_id"]), ("carrier_id", d["carrier_id"]),
        ("price_fen", d["price_fen"]), ("settled_ms", env["ts"]), ("how", d["how"]),
        ("fee_fen", d["fee_fen"]), ("payout_fen", d["payout_fen"]),
        ("refund_fen", d["refund_fen"]), ("premium_fen", d["premium_fen"]),
        ("insurer_id", d["insurer_id"]),
    ]  # fmt: skip


_HANDLERS = {
    # market
    "load.rested": _rested,
    "auction.opened": _rested,
    "deal.made": _deal_made,
    "bid.accepted": _bid_accepted,
    "auction.closed": _auction_closed,
    "offer.rested": _offer_rested,
    "order.expired": _ref(lc.EXPIRED, "expired", None),
    "order.cancelled": _ref(lc.CANCELLED, "cancelled", "withdrawn"),
    "order.rejected": _order_rejected,
    # settlement
    "load.rejected": _load_rejected,
    "load.funded": _log_only,
    "hold.resized": _log_only,
    "hold.released": _log_only,
    "deal.settled": _deal_event(lc.SETTLED, _settled_columns),
    "escrow.frozen": _deal_event(None, lambda d, env: [("frozen_fen", d["amount_fen"])]),
    "escrow.refunded": _deal_event(
        lc.REFUNDED, lambda d, env: [("refunded_ms", env["ts"]), ("refunded_fen", d["amount_fen"])]
    ),
    # shipments
    "shipment.picked_up": _deal_event(
        lc.PICKED_UP, lambda d, env: [("carrier_id", d["carrier_id"]), ("picked_up_ms", env["ts"])]
    ),
    "shipment.delivered": _deal_event(
        lc.DELIVERED, lambda d, env: [("delivered_ms", env["ts"]), ("proof_ref", d["proof_ref"])]
    ),
    "shipment.disputed": _deal_event(
        lc.DISPUTED,
        lambda d, env: [
            ("disputed_ms", env["ts"]),
            ("disputed_by", d["participant_id"]),
            ("dispute_reason", d["reason"]),
        ],  # fmt: skip
    ),
    "dispute.decided": _deal_event(
        None,
        lambda d, env: [
            ("decided_ms", env["ts"]),
            ("decided_by", d["operator_id"]),
            ("resolution", d["resolution"]),
            ("carrier_fen", d["carrier_fen"]),
        ],  # fmt: skip
    ),
    # Money of participants, not of loads: nothing to show here.
    "funds.deposited": lambda d, env: Fold(),
    "funds.withdrawn": lambda d, env: Fold(),
    "deposit.rejected": lambda d, env: Fold(),
    "withdrawal.rejected": lambda d, env: Fold(),
}
