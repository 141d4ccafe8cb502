"""Settings of the gateway alone, read from WLEX_GATEWAY_* environment variables.

The shared services.common.settings.Settings carries what every process agrees on
(brokers, database, ports); these are the gateway's own knobs.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WLEX_GATEWAY_", extra="ignore")

    # The PostgreSQL schema the gateway owns (tests give each run its own).
    db_schema: str = "gateway"
    # A POST's two statements run in group commits (groupcommit.py), which hold one
    # connection each while a group is in flight; the rest serve GETs, the projector,
    # the outbox relay and the stream hub.
    db_pool_max: int = 32

    # Token bucket per API key: sustained rate and burst. A shipper posting a load a
    # second is busy; 50/s with a burst of 100 leaves room for batch uploads.
    rate_per_s: float = 50.0
    rate_burst: int = 100
    rate_keys_max: int = 100_000  # buckets kept; the least recently used is dropped first

    # Idempotency: a key is remembered this long; an attempt holds its key this long
    # before a retry may take it over (a crashed attempt frees its key when it runs out).
    idempotency_ttl_s: int = 24 * 3600
    idempotency_lease_s: float = 10.0
    # The broker must acknowledge a command within this; else 503 and the key is freed.
    produce_timeout_s: float = 5.0

    # A key's participant, role and status are cached this long: a suspension made
    # through another gateway instance takes effect within it.
    auth_cache_s: float = 5.0
    auth_cache_max: int = 10_000

    body_bytes_max: int = 16 * 1024

    # Settlement's read API (balances and statements come from the ledger itself). The
    # local runtime points this at the settlement service's port.
    settlement_url: str = "http://127.0.0.1:18000"
    settlement_timeout_s: float = 2.0

    # The read-model projector (projection_service.py): its consumer group, records per
    # batch (one PostgreSQL transaction each), and how long an event waits for a load or
    # offer row that has not appeared (the gateway records a load after the broker's ack).
    projection_group: str = "gateway-projection"
    projection_batch_max: int = 500
    projection_parked_ttl_s: float = 600.0

    # GET /v1/loads/{id}/events: a comment after this much silence (proxies drop idle
    # connections), a stream lasts at most sse_max_s (the client reconnects with
    # Last-Event-ID), polls every sse_poll_s for rows projected by another instance, and
    # at most sse_streams_max streams are open per process (then 503).
    sse_keepalive_s: float = 15.0
    sse_max_s: float = 300.0
    sse_poll_s: float = 1.0
    sse_streams_max: int = 1000
