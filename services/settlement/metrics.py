"""Prometheus metrics of the settlement service, named wlex_settlement_<what>_<unit>.

Labels are bounded: outcome and reason words (services.common.reasons and the gate's
fixed outcomes), transaction outcome, partition of an input topic (a fixed count).
Never a lane, participant, load or command id. The Kafka adapter's own series are
kafka_metrics("settlement") (wlex_settlement_kafka_*); the ledger's invariant gauge is
check.invariant_gauge(), set by the service's audit (audit.py) in `registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import BATCH_RECORDS_BUCKETS, BATCH_SECONDS_BUCKETS

# EndTxn plus the markers: a few ms on a quiet broker, a second under a stall.
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True, slots=True)
class SettlementMetrics:
    # -- the funding gate ----------------------------------------------------------------
    gate_decisions: Counter  # labels: outcome, reason ("" when none); counted at commit
    gate_resent: Counter  # decisions recorded by an earlier run, produced again
    gate_duplicates: Counter  # a command id seen again at another offset: nothing produced
    gate_batch_commands: Histogram
    gate_batch_seconds: Histogram  # fetch to Kafka commit
    gate_decide_seconds: Histogram  # the PostgreSQL transaction of a batch
    gate_commit_seconds: Histogram  # commit_transaction() alone
    gate_transactions: Counter  # labels: outcome (committed, aborted)
    gate_lag: Gauge  # labels: partition (of commands)
    # -- the settler and its outbox ------------------------------------------------------
    settler_events: Counter  # labels: type, outcome (applied, ignored, deferred, refused)
    settler_ledger_refusals: Counter  # labels: result (a ledger result word)
    settler_batch_events: Histogram
    settler_batch_seconds: Histogram  # the PostgreSQL transaction of a batch
    settler_batch_retries: Counter  # labels: why (race, refused)
    settler_deferred: Gauge  # shipments events waiting for their deal.made
    settler_lag: Gauge  # labels: topic, partition (a fixed count of each)
    outbox_unsent: Gauge
    # -- the invariant audit (audit.py) --------------------------------------------------
    invariant_checks: Counter  # labels: outcome (ok, broken, error)
    invariant_check_seconds: Histogram
    registry: CollectorRegistry  # where check.publish sets the invariant gauge


@cache
def settlement_metrics(registry: CollectorRegistry = REGISTRY) -> SettlementMetrics:
    p = "wlex_settlement"
    return SettlementMetrics(
        gate_decisions=Counter(
            f"{p}_gate_decisions_total",
            "Commands decided by the funding gate, by outcome and reason, counted at commit.",
            ["outcome", "reason"],
            registry=registry,
        ),
        gate_resent=Counter(
            f"{p}_gate_resent_decisions_total",
            "Decisions recorded by an earlier run whose Kafka transaction never committed,"
            " produced again as recorded.",
            registry=registry,
        ),
        gate_duplicates=Counter(
            f"{p}_gate_duplicate_commands_total",
            "Commands whose id the gate had already decided at another offset: dropped.",
            registry=registry,
        ),
        gate_batch_commands=Histogram(
            f"{p}_gate_batch_commands",
            "Records per gate batch, dead letters included.",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        ),
        gate_batch_seconds=Histogram(
            f"{p}_gate_batch_seconds",
            "From a gate batch's fetch to its Kafka commit.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        ),
        gate_decide_seconds=Histogram(
            f"{p}_gate_decide_seconds",
            "The PostgreSQL transaction of a gate batch (decisions, holds, ledger).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        ),
        gate_commit_seconds=Histogram(
            f"{p}_gate_transaction_commit_seconds",
            "commit_transaction() of a gate batch alone (EndTxn and markers).",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        ),
        gate_transactions=Counter(
            f"{p}_gate_transactions_total",
            "Kafka transactions of the gate by outcome (committed, aborted).",
            ["outcome"],
            registry=registry,
        ),
        gate_lag=Gauge(
            f"{p}_gate_consumer_lag_messages",
            "Last stable offset of commands minus the gate's next offset to consume.",
            ["partition"],
            registry=registry,
        ),
        settler_events=Counter(
            f"{p}_settler_events_total",
            "market and shipments events the settler took, by type and outcome, counted at"
            " commit (a deferred event counts again when it is applied).",
            ["type", "outcome"],
            registry=registry,
        ),
        settler_ledger_refusals=Counter(
            f"{p}_settler_ledger_refusals_total",
            "Transfers of the settler the ledger refused, by result word: each is a bug or a"
            " state the rules do not know; the event is kept in settler_refusals.",
            ["result"],
            registry=registry,
        ),
        settler_batch_events=Histogram(
            f"{p}_settler_batch_events",
            "New (not yet seen) events per settler batch.",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        ),
        settler_batch_seconds=Histogram(
            f"{p}_settler_batch_seconds",
            "The PostgreSQL transaction of a settler batch (inbox, ledger, rows, outbox).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        ),
        settler_batch_retries=Counter(
            f"{p}_settler_batch_retries_total",
            "Settler transactions run again: race (lost to another transaction) or refused"
            " (the ledger refused a transfer: the batch is redone event by event).",
            ["why"],
            registry=registry,
        ),
        settler_deferred=Gauge(
            f"{p}_settler_deferred_events",
            "shipments events waiting for their deal.made.",
            registry=registry,
        ),
        settler_lag=Gauge(
            f"{p}_settler_consumer_lag_messages",
            "Last stable offset minus the settler's next offset to consume.",
            ["topic", "partition"],
            registry=registry,
        ),
        outbox_unsent=Gauge(
            f"{p}_outbox_unsent_events",
            "Settlement events written by the settler and not yet acknowledged by Kafka.",
            registry=registry,
        ),
        invariant_checks=Counter(
            f"{p}_invariant_checks_total",
            "Rounds of the service's ledger invariant check by outcome: ok, broken (some"
            " invariant does not hold: wlex_settlement_invariant_violations says which), error"
            " (the check could not run).",
            ["outcome"],
            registry=registry,
        ),
        invariant_check_seconds=Histogram(
            f"{p}_invariant_check_seconds",
            "One round of the ledger invariant check (it reads every transfer).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        ),
        registry=registry,
    )
