"""Reason codes: the one list of words that engine rejections, API problem types,
metric labels and docs all use. Part of the public contract, like the schemas."""

from __future__ import annotations

# Engine rejections, in precedence order (DESIGN "Matching rules"): the first that
# applies is the one reported.
INVALID = "invalid"
EXPIRED = "expired"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_ORDER = "unknown_order"
NOT_OWNER = "not_owner"
NOT_AUCTION = "not_auction"
ABOVE_RESERVE = "above_reserve"
NOT_IMPROVING = "not_improving"

ENGINE_REJECT_PRECEDENCE: tuple[str, ...] = (
    INVALID,
    EXPIRED,
    DUPLICATE_ID,
    UNKNOWN_ORDER,
    NOT_OWNER,
    NOT_AUCTION,
    ABOVE_RESERVE,
    NOT_IMPROVING,
)

# Funding gate rejections (settlement).
INSUFFICIENT_FUNDS = "insufficient_funds"
UNKNOWN_SHIPPER = "unknown_shipper"
SUSPENDED = "suspended"

# The gate's duplicate_id: it has placed a hold for that load id before (load ids are the
# gateway's UUIDv7s, so only a bug or a replayed command repeats one); the word is the
# engine's, the check is the gate's, so a second load never shares a first one's deal id.
GATE_REJECTS: tuple[str, ...] = (INSUFFICIENT_FUNDS, UNKNOWN_SHIPPER, SUSPENDED, DUPLICATE_ID)

# Withdrawals (settlement): unknown_participant when the gate has no such participant.
UNKNOWN_PARTICIPANT = "unknown_participant"
# Deposits and withdrawals (settlement): the participant's bank reference already names a
# booked transfer of that kind; the money moved once, with the first command.
DUPLICATE_BANK_REF = "duplicate_bank_ref"

ALL: frozenset[str] = frozenset(
    ENGINE_REJECT_PRECEDENCE + GATE_REJECTS + (UNKNOWN_PARTICIPANT, DUPLICATE_BANK_REF)
)
