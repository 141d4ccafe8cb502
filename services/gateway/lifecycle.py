"""The life of a load and its deal, as the gateway shows it (pure: no I/O).

One status per load, in the `load` table; once the load is dealt, its status is also
the deal's shipment state (GET /v1/deals/{id} reads it from the load):

    requested -> open -> dealt -> picked_up -> delivered -> settled
                    \\         \\________\\__________\\-> disputed -> settled | refunded
                     -> rejected | cancelled | expired

The read model is fed by several topics (market, settlement, shipments), and the order
between topics is not defined: deal.settled (settlement) can be projected before the
shipment.delivered (shipments) that caused it. So a status only ever moves forward, by
rank: an event whose status ranks at or below the load's present one changes nothing.
That makes the fold insensitive to the order of arrival across topics and to replays.
"""

from __future__ import annotations

REQUESTED = "requested"
OPEN = "open"
DEALT = "dealt"
PICKED_UP = "picked_up"
DELIVERED = "delivered"
DISPUTED = "disputed"
SETTLED = "settled"
REFUNDED = "refunded"
REJECTED = "rejected"
CANCELLED = "cancelled"
EXPIRED = "expired"

RANK: dict[str, int] = {
    REQUESTED: 0,
    OPEN: 1,
    DEALT: 2,
    PICKED_UP: 3,
    DELIVERED: 4,
    DISPUTED: 5,
    # Final: nothing follows them, so they share the top rank.
    SETTLED: 6,
    REFUNDED: 6,
    REJECTED: 6,
    CANCELLED: 6,
    EXPIRED: 6,
}
STATUSES: tuple[str, ...] = tuple(RANK)
FINAL: frozenset[str] = frozenset(s for s, r in RANK.items() if r == max(RANK.values()))

# The statuses of a deal (a dealt load and after).
DEAL_STATUSES: tuple[str, ...] = (DEALT, PICKED_UP, DELIVERED, DISPUTED, SETTLED, REFUNDED)


def replaceable_by(status: str) -> list[str]:
    """The statuses that `status` may replace: every one of lower rank."""
    rank = RANK[status]
    return [s for s, r in RANK.items() if r < rank]


# Shipment actions (POST /v1/deals/{id}/<action>): the deal statuses each one fits.
# A dispute is possible until the money has moved (settled or refunded); settlement
# freezes the escrow, and ignores a dispute that arrives after its payout.
PICKUP = "pickup"
DELIVER = "delivered"
DISPUTE = "dispute"
DECISION = "decision"

ACTION_FROM: dict[str, tuple[str, ...]] = {
    PICKUP: (DEALT,),
    DELIVER: (PICKED_UP,),
    DISPUTE: (DEALT, PICKED_UP, DELIVERED),
    DECISION: (DISPUTED,),
}

# What each action makes the deal's status, as soon as the broker has the event (the
# gateway writes it then, so the next action sees it; the projector's copy of the same
# event changes nothing more). A decision leaves the status to settlement's outcome.
ACTION_TO: dict[str, str | None] = {
    PICKUP: PICKED_UP,
    DELIVER: DELIVERED,
    DISPUTE: DISPUTED,
    DECISION: None,
}
