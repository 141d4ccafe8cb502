"""Settings of the matching service: the house Settings plus its own WLEX_MATCHING_* fields.

Kept here rather than in services.common.settings because no other service reads them.
The figures behind the defaults are in docs/matching-service.md ("Batching").
"""

from __future__ import annotations

from typing import Literal

from services.common.settings import Settings


class MatchingSettings(Settings):
    # Static assignment (docs/matching-service.md "Why static assignment"): instance I
    # of N owns the partitions p of `orders` with p % N == I. `--instance/--of` on the
    # command line override these.
    matching_instance: int = 0
    matching_instances: int = 1

    # Which engine runs the market (services/matching/engines.py): the native core
    # (Rust, services/matching/native) or the Python reference. Same events, same
    # snapshots: switching keeps the state. WLEX_MATCHING_ENGINE.
    matching_engine: Literal["native", "python"] = "native"

    # One transaction per batch, of at most this many records. A transaction costs
    # some five sequential broker round trips whatever its size, so under a backlog
    # bigger batches amortise them (passthrough, 100,000 records, same broker: 24k/s
    # at 2,000, 40k/s at 5,000); at a steady rate the batch is only what arrived during
    # the previous commit, so the maximum does not add latency.
    matching_batch_records_max: int = 5000
    # Producer linger. The batch's records are appended to one BatchBuilder per
    # partition and all handed over before the sender runs, so they leave in one
    # request per broker anyway; lingering would only delay them.
    matching_linger_ms: int = 0
    # Producer batch per partition (bytes); a whole batch's events of one partition fit.
    matching_max_batch_bytes: int = 1024 * 1024
    # Consumer: bytes per partition per fetch (above any one record).
    matching_fetch_partition_bytes: int = 4 * 1024 * 1024
    # getmany's wait for the first record when idle.
    matching_poll_timeout_ms: int = 50
    # Consumer long-poll bound (fetch_min_bytes is 1: a fetch answers as soon as a
    # record arrives, so this only bounds an idle fetch and a rewind's wait).
    matching_fetch_max_wait_ms: int = 100
    # While a transaction is in flight, fetch and run through the engines what arrives,
    # polling every this many ms, until the commit is done (0: one fetch per commit).
    # With one fetch, what arrives during a commit waits for one more transaction
    # (pipeline.Pipeline._next_while).
    matching_gather_poll_ms: int = 2
    # Producer retry backoff. aiokafka's default of 100 ms is paid by every produce
    # that a Kafka 4 broker's transaction verification answers NOT_ENOUGH_REPLICAS
    # (aiokafka #1172: the coordinator was busy with our own AddOffsetsToTxn) and by
    # every CONCURRENT_TRANSACTIONS of AddOffsetsToTxn; the retry itself is one cheap
    # round trip, so the wait is what costs.
    matching_retry_backoff_ms: int = 10
    # aiokafka's wait before it retries the AddPartitionsToTxn that the coordinator
    # refuses while it still writes the previous transaction's markers (a fixed 20 ms,
    # BACKOFF_OVERRIDE): nearly every transaction after a commit meets it once.
    matching_add_partitions_backoff_ms: float = 2.0
    # Transactional ids taken in turn by the batches (pipeline.Pipeline.run): with two,
    # a batch's transaction never waits for the markers of the one just committed.
    # Each is derived from the instance's partition set, and a restarted instance
    # fences all of them, so keep this the same across restarts.
    matching_transactional_ids: int = 2
    # Transactions at once (<= matching_transactional_ids): with 2, the next batch's
    # transaction starts once this one's records are acknowledged and its offsets
    # added, while this one's EndTxn is in flight.
    matching_transactions_in_flight: int = 2
    # Open a batch's transaction, with its partitions and the consumer group added,
    # while the batch is still gathered (pipeline.Pipeline.early_begin): its sends
    # then take one round trip instead of three.
    matching_early_begin: bool = True

    # Snapshots: per partition, after this many commands or this many seconds with at
    # least one command, whichever comes first. 0 disables the trigger.
    matching_snapshot_every_commands: int = 200_000
    matching_snapshot_interval_s: float = 300.0

    # Clock source: a clock.tick per owned partition at this interval when the
    # partition's engine clock lags the wall clock by more than it. 0 disables ticks.
    matching_tick_interval_ms: int = 1000

    # How long a restart may spend loading snapshots and replaying before giving up.
    matching_recovery_timeout_s: float = 600.0

    def owned_partitions(self, partition_count: int) -> list[int]:
        """The partitions of `orders` this instance owns."""
        n, i = self.matching_instances, self.matching_instance
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"instance {i} of {n}: need 0 <= instance < of")
        if n > partition_count:
            raise ValueError(f"{n} instances for {partition_count} partitions")
        return [p for p in range(partition_count) if p % n == i]
