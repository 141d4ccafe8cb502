-- The gateway's tables: participants and their API keys, idempotency keys, and what the
-- gateway knows of the loads and offers it forwarded. Times are epoch ms (bigint), like
-- the events, except bookkeeping columns.

CREATE TABLE participant (
    participant_id text        PRIMARY KEY,
    role           text        NOT NULL CHECK (role IN ('shipper', 'carrier', 'insurer', 'operator')),
    name           text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_ms     bigint      NOT NULL,
    suspended_ms   bigint
);

-- A key is "wlx_<key_id>_<secret>"; only sha256(secret) is kept (docs/gateway.md).
CREATE TABLE api_key (
    key_id         text        PRIMARY KEY,
    participant_id text        NOT NULL REFERENCES participant,
    secret_sha256  bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    created_ms     bigint      NOT NULL,
    revoked_ms     bigint
);
CREATE INDEX api_key_participant ON api_key (participant_id);

-- One row per (participant, Idempotency-Key). in_flight: an attempt holds the key until
-- lease_until and carries the effect to make (`pending`, e.g. the command envelope) so a
-- retry after a crash makes the same one; done: the stored answer is replayed.
CREATE TABLE idempotency_key (
    participant_id text        NOT NULL,
    idem_key       text        NOT NULL,
    fingerprint    bytea       NOT NULL,
    state          text        NOT NULL CHECK (state IN ('in_flight', 'done')),
    attempt        integer     NOT NULL DEFAULT 1,
    lease_until    timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    pending        bytea,  -- exact bytes of the effect (a command envelope), resent as they are
    status         integer,
    headers        jsonb,
    body           bytea,
    PRIMARY KEY (participant_id, idem_key)
);
CREATE INDEX idempotency_key_expires ON idempotency_key (expires_at);

-- Loads the gateway forwarded. status stays 'requested' until the read-model projector
-- (a later increment) follows the market.
CREATE TABLE load (
    load_id        text        PRIMARY KEY,
    shipper_id     text        NOT NULL REFERENCES participant,
    status         text        NOT NULL,
    origin         text        NOT NULL,
    destination    text        NOT NULL,
    vehicle_class  text        NOT NULL,
    command_id     text        NOT NULL,
    data           jsonb       NOT NULL,
    requested_ms   bigint      NOT NULL,
    cancel_command_id   text,
    cancel_requested_ms bigint
);
-- Newest first per shipper (load ids are UUIDv7: id order is time order).
CREATE INDEX load_shipper ON load (shipper_id, load_id DESC);

CREATE TABLE offer (
    offer_id       text        PRIMARY KEY,
    carrier_id     text        NOT NULL REFERENCES participant,
    status         text        NOT NULL,
    origin         text        NOT NULL,
    destination    text        NOT NULL,
    vehicle_class  text        NOT NULL,
    command_id     text        NOT NULL,
    data           jsonb       NOT NULL,
    requested_ms   bigint      NOT NULL,
    cancel_command_id   text,
    cancel_requested_ms bigint
);
CREATE INDEX offer_carrier ON offer (carrier_id, offer_id DESC);
