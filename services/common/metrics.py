"""Prometheus metrics of the Kafka adapter, named wlex_<service>_kafka_<what>_<unit>.

Labels are bounded: topic (the fixed set of the AsyncAPI document), dead-letter reason
and transaction outcome. Never a lane, participant or event id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

# Batches run from a few hundred microseconds (a handful of commands, no
# transaction) to seconds (thousands of commands in one transaction on a slow disk).
BATCH_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BATCH_RECORDS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class KafkaMetrics:
    consumed: Counter  # labels: topic
    produced: Counter  # labels: topic
    dead_lettered: Counter  # labels: topic (the source topic), reason
    transactions: Counter  # labels: outcome (committed, aborted)
    batch_seconds: Histogram  # fetch to commit, one observation per batch
    batch_records: Histogram


@cache
def kafka_metrics(service: str, registry: CollectorRegistry = REGISTRY) -> KafkaMetrics:
    """The Kafka metrics of a service, registered once per (service, registry)."""
    if not _SERVICE_NAME.match(service):
        raise ValueError(f"service name must be a metric name part: {service!r}")
    p = f"wlex_{service}_kafka"
    return KafkaMetrics(
        consumed=Counter(
            f"{p}_consumed_messages_total",
            "Records consumed, dead letters included.",
            ["topic"],
            registry=registry,
        ),
        produced=Counter(
            f"{p}_produced_messages_total",
            "Records produced, dead letters included; in transactions, counted at commit.",
            ["topic"],
            registry=registry,
        ),
        dead_lettered=Counter(
            f"{p}_dead_letters_total",
            "Records sent to dlq, by source topic and reason (undecodable, invalid).",
            ["topic", "reason"],
            registry=registry,
        ),
        transactions=Counter(
            f"{p}_transactions_total",
            "Kafka transactions by outcome (committed, aborted).",
            ["outcome"],
            registry=registry,
        ),
        batch_seconds=Histogram(
            f"{p}_batch_seconds",
            "Time from a batch's fetch to its commit.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        ),
        batch_records=Histogram(
            f"{p}_batch_records",
            "Records per consumed batch.",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        ),
    )
