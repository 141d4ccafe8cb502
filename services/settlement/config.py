"""Settings of the settlement service: the house Settings plus its own fields.

Shared by the funding gate and the settler (one process runs both). Kept here rather
than in services.common.settings because no other service reads them.
"""

from __future__ import annotations

from services.common.settings import Settings


class SettlementSettings(Settings):
    # PostgreSQL schema of the ledger, the gate's decisions and the settler's tables.
    db_schema: str = "settlement"

    # Platform fee (postings.FeeSchedule): basis points of the price, at least the minimum.
    fee_bps: int = 200
    fee_minimum_fen: int = 500

    # The hold for an auction load without a reserve: the shipper named no highest
    # acceptable bid, so the gate names one (and forwards it as the reserve, so the
    # engine refuses any bid the hold could not pay).
    auction_hold_cap_fen: int = 2_000_000

    # One PostgreSQL transaction and one Kafka transaction per batch of at most this
    # many records (docs/settlement.md: a batch of 500 already passes 10,000
    # transfers/s; the cost per batch is a fixed number of round trips).
    gate_batch_max: int = 2000
    settler_batch_max: int = 2000

    # Static assignment, like matching: instance I of N owns the partitions p of
    # `commands` (and of the settler's inputs) with p % N == I.
    settlement_instance: int = 0
    settlement_instances: int = 1

    # The settler's outbox relay (outbox.py): rows per round, and the pause between
    # rounds when nothing waits (a poll: the delay of an event is bounded by it).
    outbox_batch_max: int = 1000
    outbox_poll_interval_s: float = 0.05

    # The ledger's invariants checked by instance 0 (audit.py), feeding the gauge
    # wlex_settlement_invariant_violations: seconds between rounds, 0 for never. Each
    # round reads every transfer, so this is minutes on a large ledger, not seconds.
    ledger_check_interval_s: float = 60.0

    def owned_partitions(self, partition_count: int) -> list[int]:
        """The partitions of an input topic this instance owns."""
        n, i = self.settlement_instances, self.settlement_instance
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"instance {i} of {n}: need 0 <= instance < of")
        if n > partition_count:
            raise ValueError(f"{n} instances for {partition_count} partitions")
        return [p for p in range(partition_count) if p % n == i]
