"""The hold of one funded load: a load_hold row (migrations/0002_gate.sql), shared by the
funding gate, which inserts it ('held') with the hold transfer, and the settler, which
follows it to its end. Pure."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

# -- states of a load's hold (load_hold.state) ----------------------------------------------
HELD = "held"  # the gate placed the hold; no deal yet
DEALT = "dealt"  # re-sized to the deal price (+ premium)
RELEASED = "released"  # voided: cancelled, expired, rejected or unawarded
FROZEN = "frozen"  # disputed: neither paid nor refunded until an operator decides
SETTLED = "settled"  # posted: delivered, or released / split by an operator
REFUNDED = "refunded"  # voided by an operator's refund
LIVE_STATES = frozenset({HELD, DEALT, FROZEN})


@dataclass(frozen=True, slots=True)
class LoadHold:
    """A load_hold row: the hold of one funded load."""

    load_id: str
    shipper_id: str
    post_command_id: str
    lane_key: str
    mode: str
    hold_id: str
    hold_fen: int
    insurer_id: str | None
    premium_fen: int
    state: str
    deal_id: str | None = None
    carrier_id: str | None = None
    price_fen: int | None = None
    updated_ms: int = 0

    def record(self) -> tuple:
        """The row's values in COLUMNS order."""
        return astuple(self)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LoadHold))  # in the row's order
