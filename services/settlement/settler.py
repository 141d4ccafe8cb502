"""The settler's rules, pure: what each `market` or `shipments` event does to a load's
hold (docs/settlement.md "The settler").

`decide(event, row, fees)` takes one event and the load's `LoadHold` (the shared
load_hold row, None when there is none) and gives an `Effect`: the ledger transfers
(postings.*), the row after, and the settlement events to publish. `Rules` runs a batch
of events over the rows of a batch, keeps shipments events whose deal has not been seen
yet (deferred) and applies them right after their deal.made.

No I/O, no clock: time is the event's ts. Every id is derived from the cause: transfer ids
are `transfer_id(event id, leg)` and an emitted event's id is `<event id>:<index>`, so the
same events give the same transfers and the same bytes on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.common.envelope import make
from services.settlement import postings
from services.settlement.holds import (
    DEALT,
    FROZEN,
    HELD,
    REFUNDED,
    RELEASED,
    SETTLED,
    LoadHold,
)
from services.settlement.ledger import Transfer, transfer_id

SOURCE = "settlement"

# -- what the settler did with an event (settler_inbox.outcome) ------------------------------
APPLIED = "applied"  # its rule ran (possibly moving no money: a pickup, a delivery under dispute)
IGNORED = "ignored"  # not the settler's business or already done (reason says which)
DEFERRED = "deferred"  # a shipments event waiting for its deal.made
REFUSED = "refused"  # could not apply: kept with its envelope for an operator
OUTCOMES = (APPLIED, IGNORED, DEFERRED, REFUSED)

# -- hold.released reasons (schemas/events/hold.released.schema.json) ------------------------
CANCELLED, EXPIRED, REJECTED, UNAWARDED = "cancelled", "expired", "rejected", "unawarded"

MARKET_TYPES = frozenset(
    {"deal.made", "order.cancelled", "order.expired", "order.rejected", "auction.closed"}
)
SHIPMENT_TYPES = frozenset(
    {"shipment.picked_up", "shipment.delivered", "shipment.disputed", "dispute.decided"}
)
# The settler keeps an inbox row only for these: the other market outcomes (load.rested,
# bid.accepted, ...) move no money, and deduplicating them would only cost writes.
TYPES = MARKET_TYPES | SHIPMENT_TYPES


class Effect(NamedTuple):
    """What one event does. `after` is None when the row does not change; `reason` says
    why an event was ignored or refused (one word). A tuple, like LoadHold: one is built
    per event of every batch."""

    event: dict[str, Any]
    load_id: str | None
    outcome: str
    reason: str = ""
    transfers: tuple[Transfer, ...] = ()
    before: LoadHold | None = None
    after: LoadHold | None = None
    emitted: tuple[dict[str, Any], ...] = ()


def load_id_of(event: dict[str, Any]) -> str | None:
    """The load an event concerns: ref_id of the order.* outcomes (which may name an
    offer or a bid: those have no hold), load_id of the others; None for other types."""
    t = event["type"]
    if t not in TYPES:
        return None
    data = event["data"]
    return data.get("ref_id") if t.startswith("order.") else data["load_id"]


def decide(event: dict[str, Any], row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    """The effect of one event on the load's hold `row` (None: the load has none)."""
    t = event["type"]
    rule = _RULES.get(t)
    if rule is None:
        return Effect(event, None, IGNORED, "not_settlement")
    return rule(event, row, fees)


# -- market ---------------------------------------------------------------------------


def _deal_made(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    d = e["data"]
    if row is None:
        # The gate records the hold before it forwards the load.post: a deal without one
        # is a deal nobody funded. Kept for an operator, never guessed at.
        return Effect(e, d["load_id"], REFUSED, "no_hold")
    if row.state != HELD:
        if row.deal_id == d["deal_id"]:
            return Effect(e, row.load_id, IGNORED, "already_dealt", before=row)
        return Effect(e, row.load_id, REFUSED, "not_held", before=row)
    new_fen = d["price_fen"] + row.premium_fen
    if new_fen > row.hold_fen:
        # The engine never deals above the limit or reserve the gate held for; growing the
        # hold would take money the shipper never agreed to reserve.
        return Effect(e, row.load_id, REFUSED, "deal_above_hold", before=row)
    # Re-sized even when the amount stays the same: one path, and the deal's hold id is
    # always transfer_id(deal event, "hold").
    eid = e["id"]
    new_hold = transfer_id(eid, "hold")
    after = row.dealt(new_hold, new_fen, d["deal_id"], d["carrier_id"], d["price_fen"], e["ts"])
    out = _emit(e, row.load_id, "hold.resized", {
        "load_id": row.load_id, "deal_id": d["deal_id"], "shipper_id": row.shipper_id,
        "hold_fen": new_fen, "released_fen": row.hold_fen - new_fen, "transfer_id": new_hold,
    })  # fmt: skip
    transfers = postings.resize_hold(eid, row.hold_id, row.shipper_id, new_fen)
    return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)


def _release(e: dict, row: LoadHold, reason: str) -> Effect:
    transfers = postings.release_hold(e["id"], row.hold_id)
    after = row.moved(RELEASED, e["ts"])
    out = _emit(e, row.load_id, "hold.released", {
        "load_id": row.load_id, "shipper_id": row.shipper_id, "amount_fen": row.hold_fen,
        "reason": reason, "transfer_id": transfers[0].id,
    })  # fmt: skip
    return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)


def _order_ended(reason: str):
    def rule(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
        ref = e["data"]["ref_id"]
        if row is None:
            return Effect(e, ref, IGNORED, "not_a_load")  # an offer or a bid: no hold
        if row.state != HELD:
            return Effect(e, ref, IGNORED, "not_held", before=row)
        return _release(e, row, reason)

    return rule


def _order_rejected(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    ref = e["data"]["ref_id"]
    if row is None:
        return Effect(e, ref, IGNORED, "not_a_load")
    # Only the refusal of the load.post itself ends the load: a refused cancel (say, by
    # someone who does not own the load) names the same load and must leave it alone.
    if e["cause"] != row.post_command_id:
        return Effect(e, ref, IGNORED, "other_command", before=row)
    if row.state != HELD:
        return Effect(e, ref, IGNORED, "not_held", before=row)
    return _release(e, row, REJECTED)


def _auction_closed(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    d = e["data"]
    if d["bid_id"] is not None:
        return Effect(e, d["load_id"], IGNORED, "awarded", before=row)  # its deal.made did it
    if row is None:
        return Effect(e, d["load_id"], REFUSED, "no_hold")
    if row.state != HELD:
        return Effect(e, row.load_id, IGNORED, "not_held", before=row)
    return _release(e, row, UNAWARDED)


# -- shipments ------------------------------------------------------------------------


def _deal_of(e: dict, row: LoadHold | None) -> Effect | None:
    """None when the shipments event's deal is the row's; else what to do instead."""
    d = e["data"]
    if row is None or row.state == HELD:
        # Its deal.made is still on its way through `market` (another topic, another
        # partition): keep the event and apply it right after the deal.
        return Effect(e, d["load_id"], DEFERRED, "no_deal_yet", before=row)
    if row.deal_id != d["deal_id"]:
        return Effect(e, row.load_id, REFUSED, "other_deal", before=row)
    return None


def _picked_up(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    # Moves no money; the inbox row is the record.
    return Effect(e, e["data"]["load_id"], APPLIED, "", before=row)


def _settled_event(e: dict, row: LoadHold, how: str, price_fen: int, fee_fen: int,
                   premium_fen: int) -> tuple[dict, ...]:  # fmt: skip
    return _emit(e, row.load_id, "deal.settled", {
        "deal_id": row.deal_id, "load_id": row.load_id, "shipper_id": row.shipper_id,
        "carrier_id": row.carrier_id, "price_fen": price_fen, "fee_fen": fee_fen,
        "payout_fen": price_fen - fee_fen, "premium_fen": premium_fen,
        "insurer_id": row.insurer_id if premium_fen else None,
        "refund_fen": row.hold_fen - price_fen - premium_fen, "how": how,
    })  # fmt: skip


def _premium(row: LoadHold) -> dict[str, Any]:
    if row.premium_fen and row.insurer_id:
        return {"insurer_id": row.insurer_id, "premium_fen": row.premium_fen}
    return {}


def _delivered(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    other = _deal_of(e, row)
    if other is not None:
        return other
    assert row is not None and row.price_fen is not None and row.carrier_id is not None
    if row.state == FROZEN:
        # Under dispute: not paid now; the operator's decision pays or refunds it. The
        # inbox records the delivery (the check holds a delivered deal to being settled).
        return Effect(e, row.load_id, APPLIED, "frozen", before=row)
    if row.state != DEALT:
        return Effect(e, row.load_id, IGNORED, "already_" + row.state, before=row)
    fee = fees.fee_fen(row.price_fen)
    premium = _premium(row)
    transfers = postings.settle(e["id"], row.hold_id, row.carrier_id, row.price_fen, fee, **premium)
    after = row.moved(SETTLED, e["ts"])
    out = _settled_event(e, row, "delivered", row.price_fen, fee, premium.get("premium_fen", 0))
    return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)


def _disputed(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    other = _deal_of(e, row)
    if other is not None:
        return other
    assert row is not None
    if row.state != DEALT:
        # Frozen already, or paid out / refunded: too late to freeze (a claim is the
        # insurer's business then).
        return Effect(e, row.load_id, IGNORED, "already_" + row.state, before=row)
    transfers = postings.freeze(e["id"], row.hold_id)
    after = row.moved(FROZEN, e["ts"])
    out = _emit(e, row.load_id, "escrow.frozen",
                {"deal_id": row.deal_id, "load_id": row.load_id, "amount_fen": row.hold_fen})  # fmt: skip
    return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)


def _decided(e: dict, row: LoadHold | None, fees: postings.FeeSchedule) -> Effect:
    other = _deal_of(e, row)
    if other is not None:
        return other
    assert row is not None and row.price_fen is not None and row.carrier_id is not None
    if row.state in (SETTLED, REFUNDED):
        return Effect(e, row.load_id, IGNORED, "already_" + row.state, before=row)
    if row.state != FROZEN:
        return Effect(e, row.load_id, REFUSED, "not_frozen", before=row)
    d, eid, ts = e["data"], e["id"], e["ts"]
    resolution = d["resolution"]
    if resolution == "refund":
        transfers = postings.resolve_refund(eid, row.hold_id)
        out = _emit(e, row.load_id, "escrow.refunded", {
            "deal_id": row.deal_id, "load_id": row.load_id, "shipper_id": row.shipper_id,
            "amount_fen": row.hold_fen,
        })  # fmt: skip
        after = row.moved(REFUNDED, ts)
        return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)
    if resolution == "release":
        fee = fees.fee_fen(row.price_fen)
        premium = _premium(row)
        transfers = postings.resolve_release(eid, row.hold_id, row.carrier_id, row.price_fen,
                                             fee, **premium)  # fmt: skip
        out = _settled_event(e, row, "release", row.price_fen, fee, premium.get("premium_fen", 0))
    else:  # split: carrier_fen is settled as the price, the rest of the hold refunded
        carrier_fen = d["carrier_fen"]
        if carrier_fen is None or carrier_fen > row.price_fen:
            return Effect(e, row.load_id, REFUSED, "invalid_split", before=row)
        fee = fees.fee_fen(carrier_fen)
        premium = _premium(row)
        transfers = postings.resolve_split(eid, row.hold_id, row.carrier_id, carrier_fen, fee,
                                           **premium)  # fmt: skip
        out = _settled_event(e, row, "split", carrier_fen, fee, premium.get("premium_fen", 0))
    after = row.moved(SETTLED, ts)
    return Effect(e, row.load_id, APPLIED, "", tuple(transfers), row, after, out)


def _emit(cause: dict, load_id: str, type_: str, data: dict) -> tuple[dict, ...]:
    # One event per cause today; the index keeps ids unique if a rule ever emits more.
    return (make(type_, data, load_id, SOURCE, cause["ts"], cause=cause["id"],
                 id=f"{cause['id']}:0"),)  # fmt: skip


_RULES = {
    "deal.made": _deal_made,
    "order.cancelled": _order_ended(CANCELLED),
    "order.expired": _order_ended(EXPIRED),
    "order.rejected": _order_rejected,
    "auction.closed": _auction_closed,
    "shipment.picked_up": _picked_up,
    "shipment.delivered": _delivered,
    "shipment.disputed": _disputed,
    "dispute.decided": _decided,
}


# -- a batch ----------------------------------------------------------------------------


@dataclass(slots=True)
class Rules:
    """The rules over the rows of one batch.

    `rows`: load_id -> LoadHold for every load the batch names (locked by the caller);
    `deferred`: load_id -> shipments events kept earlier, in arrival order, for the
    loads of the batch's deal.made events. Both change as effects() runs.
    """

    fees: postings.FeeSchedule
    rows: dict[str, LoadHold]
    deferred: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)  # load ids whose row changed
    _undone: set[str] = field(default_factory=set)  # ids of events whose effect was undone

    def effects(self, events: Iterable[dict[str, Any]]) -> Iterator[Effect]:
        """The effect of each event in order, each applied to the rows before the next
        is decided; after a deal.made, the events deferred for its load.

        Lazy on purpose: a caller that finds an effect's transfers refused by the ledger
        calls undo(effect) before taking the next one, and the rest is decided on the
        row as it really is."""
        for event in events:
            effect = self._step(event)
            yield effect
            if effect.event["type"] == "deal.made" and effect.outcome == APPLIED:
                if effect.event["id"] in self._undone:
                    continue
                for follower in self.deferred.pop(effect.load_id, []):
                    yield self._step(follower)

    def undo(self, effect: Effect) -> None:
        """Put the row back as it was before `effect` (its transfers did not apply)."""
        self._undone.add(effect.event["id"])
        if effect.after is not None and effect.before is not None:
            self.rows[effect.before.load_id] = effect.before

    def _step(self, event: dict[str, Any]) -> Effect:
        load_id = load_id_of(event)
        effect = decide(event, self.rows.get(load_id) if load_id else None, self.fees)
        if effect.outcome == DEFERRED:
            self.deferred.setdefault(effect.load_id, []).append(event)
        elif effect.after is not None:
            self.rows[effect.after.load_id] = effect.after
            self.changed.add(effect.after.load_id)
        return effect
