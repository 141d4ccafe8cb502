-- Read models, written by the projector (services/gateway/projection_service.py) from
-- the market, settlement, insurance and shipments topics. The `load` and `offer` rows
-- the gateway wrote at POST are extended, not copied: a load's status lives in one
-- place, load.status, and a deal's shipment state is its load's status.

ALTER TABLE load
    ADD COLUMN reject_reason text,
    ADD COLUMN status_ms     bigint,  -- ts of the event that set the status
    -- The per-load event log's last sequence number. Taking the next one updates this
    -- row, so two transactions appending to one load's log queue on its row lock and
    -- commit in sequence order: a reader never sees seq n+1 before n.
    ADD COLUMN last_seq      bigint NOT NULL DEFAULT 0;
-- Filters of GET /v1/loads: status per shipper, newest first.
CREATE INDEX load_shipper_status ON load (shipper_id, status, load_id DESC);
-- order.rejected names the refused command by id (its cause).
CREATE INDEX load_command ON load (command_id);
CREATE INDEX load_cancel_command ON load (cancel_command_id) WHERE cancel_command_id IS NOT NULL;

ALTER TABLE offer
    ADD COLUMN reject_reason text,
    ADD COLUMN status_ms     bigint,
    ADD COLUMN remaining_kg  bigint,
    ADD COLUMN remaining_dm3 bigint,
    ADD COLUMN deals         integer NOT NULL DEFAULT 0;
CREATE INDEX offer_command ON offer (command_id);

-- A deal and its shipment. Written by several topics in any order (a settlement fact
-- may come before deal.made is projected), so every column but the keys may be null
-- until its event is seen; each is written once.
CREATE TABLE deal (
    deal_id        text   PRIMARY KEY,
    load_id        text   NOT NULL UNIQUE,
    shipper_id     text,
    carrier_id     text,
    offer_id       text,
    bid_id         text,
    price_fen      bigint,
    made_ms        bigint,
    picked_up_ms   bigint,
    delivered_ms   bigint,
    proof_ref      text,
    disputed_ms    bigint,
    disputed_by    text,
    dispute_reason text,
    decided_ms     bigint,
    decided_by     text,
    resolution     text CHECK (resolution IN ('release', 'refund', 'split')),
    carrier_fen    bigint,
    frozen_fen     bigint,
    settled_ms     bigint,
    how            text,
    fee_fen        bigint,
    payout_fen     bigint,
    refund_fen     bigint,
    premium_fen    bigint,
    insurer_id     text,
    refunded_ms    bigint,
    refunded_fen   bigint
);

-- Auction bids (bid.accepted), shown to the load's owner only.
CREATE TABLE bid (
    bid_id     text   PRIMARY KEY,
    load_id    text   NOT NULL,
    carrier_id text   NOT NULL,
    price_fen  bigint NOT NULL,
    placed_ms  bigint NOT NULL,
    status     text   NOT NULL CHECK (status IN ('live', 'withdrawn', 'won'))
);
CREATE INDEX bid_load ON bid (load_id, placed_ms);

-- Each load's events in the order the projector applied them; seq is the SSE id.
-- The envelope is kept as the compact JSON text it is sent as (jsonb would reorder it).
CREATE TABLE load_event (
    load_id  text   NOT NULL,
    seq      bigint NOT NULL,
    event_id text   NOT NULL,
    type     text   NOT NULL,
    ts_ms    bigint NOT NULL,
    envelope text   NOT NULL,
    PRIMARY KEY (load_id, seq)
);

-- Event ids already projected, in the transaction that projected them: a redelivered
-- event (a batch whose offsets did not commit, or a duplicate on the topic) changes
-- nothing. Swept after the topics' retention.
CREATE TABLE projected_event (
    event_id     text        PRIMARY KEY,
    projected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projected_event_at ON projected_event (projected_at);

-- Events whose load, offer or order row did not exist yet (see projector.py); applied
-- as soon as it does, dropped after WLEX_GATEWAY_PROJECTION_PARKED_TTL_S.
CREATE TABLE projection_parked (
    event_id  text        PRIMARY KEY,
    kind      text        NOT NULL,
    subject   text        NOT NULL,
    ts_ms     bigint      NOT NULL,
    envelope  text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projection_parked_subject ON projection_parked (subject);
CREATE INDEX projection_parked_at ON projection_parked (parked_at);
