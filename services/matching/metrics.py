"""Prometheus metrics of the matching service, named wlex_matching_<what>_<unit>.

Labels are bounded: event type (the fixed set of engine outcomes) and partition of
`orders` (a fixed count). Never a lane, participant or order id.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import BATCH_RECORDS_BUCKETS, BATCH_SECONDS_BUCKETS

# EndTxn plus the markers: a few ms on a quiet broker, a second under a stall.
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True, slots=True)
class MatchingMetrics:
    commands: Counter
    events: Counter  # labels: type
    batch_commands: Histogram
    batch_seconds: Histogram
    commit_seconds: Histogram
    transactions: Counter  # labels: outcome
    lag: Gauge  # labels: partition
    resting_orders: Gauge
    open_auctions: Gauge
    snapshot_age: Gauge  # labels: partition
    snapshot_bytes: Gauge  # labels: partition
    replayed: Counter


@cache
def matching_metrics(registry: CollectorRegistry = REGISTRY) -> MatchingMetrics:
    p = "wlex_matching"
    return MatchingMetrics(
        commands=Counter(
            f"{p}_commands_consumed_total",
            "Commands of orders fed to the engine (dead letters excluded), counted at commit.",
            registry=registry,
        ),
        events=Counter(
            f"{p}_events_produced_total",
            "Outcomes produced to market, by type, counted at commit.",
            ["type"],
            registry=registry,
        ),
        batch_commands=Histogram(
            f"{p}_batch_commands",
            "Records per transaction.",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        ),
        batch_seconds=Histogram(
            f"{p}_batch_seconds",
            "From a batch's fetch to its commit.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        ),
        commit_seconds=Histogram(
            f"{p}_transaction_commit_seconds",
            "commit_transaction() alone (EndTxn and markers).",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        ),
        transactions=Counter(
            f"{p}_transactions_total",
            "Kafka transactions by outcome (committed, aborted).",
            ["outcome"],
            registry=registry,
        ),
        lag=Gauge(
            f"{p}_consumer_lag_messages",
            "Last stable offset of orders minus the next offset to consume.",
            ["partition"],
            registry=registry,
        ),
        resting_orders=Gauge(
            f"{p}_resting_orders",
            "Market loads and offers resting in the books.",
            registry=registry,
        ),
        open_auctions=Gauge(f"{p}_open_auctions", "Auctions open in the books.", registry=registry),
        snapshot_age=Gauge(
            f"{p}_snapshot_age_seconds",
            "Since the newest committed snapshot of the partition was written.",
            ["partition"],
            registry=registry,
        ),
        snapshot_bytes=Gauge(
            f"{p}_snapshot_bytes",
            "Compressed size of the newest snapshot of the partition.",
            ["partition"],
            registry=registry,
        ),
        replayed=Counter(
            f"{p}_replayed_commands_total",
            "Commands replayed silently after a restart or an aborted batch.",
            registry=registry,
        ),
    )
