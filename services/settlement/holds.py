"""The hold of one funded load: a load_hold row (migrations/0002_gate.sql), shared by the
funding gate, which inserts it ('held') with the hold transfer, and the settler, which
follows it to its end. Pure."""

from __future__ import annotations

from typing import NamedTuple

# -- states of a load's hold (load_hold.state) ----------------------------------------------
HELD = "held"  # the gate placed the hold; no deal yet
DEALT = "dealt"  # re-sized to the deal price (+ premium)
RELEASED = "released"  # voided: cancelled, expired, rejected or unawarded
FROZEN = "frozen"  # disputed: neither paid nor refunded until an operator decides
SETTLED = "settled"  # posted: delivered, or released / split by an operator
REFUNDED = "refunded"  # voided by an operator's refund
LIVE_STATES = frozenset({HELD, DEALT, FROZEN})


class LoadHold(NamedTuple):
    """A load_hold row: the hold of one funded load.

    A tuple in the row's column order: built from a fetched record by LoadHold(*r) and
    written back as itself. The settler moves thousands a batch from state to state, and
    a tuple is built several times faster than a frozen dataclass (measured in the
    settler's benchmark, docs/performance.md)."""

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

    def moved(self, state: str, updated_ms: int) -> LoadHold:
        """The same hold in `state` as of `updated_ms`."""
        return LoadHold(self[0], self[1], self[2], self[3], self[4], self[5], self[6], self[7],
                        self[8], state, self[10], self[11], self[12], updated_ms)  # fmt: skip

    def dealt(self, hold_id: str, hold_fen: int, deal_id: str, carrier_id: str,
              price_fen: int, updated_ms: int) -> LoadHold:  # fmt: skip
        """The hold re-sized for a deal: state dealt, the new hold and the deal's terms."""
        return LoadHold(self[0], self[1], self[2], self[3], self[4], hold_id, hold_fen, self[7],
                        self[8], DEALT, deal_id, carrier_id, price_fen, updated_ms)  # fmt: skip


COLUMNS: tuple[str, ...] = LoadHold._fields  # in the row's order
