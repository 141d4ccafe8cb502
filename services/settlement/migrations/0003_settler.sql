-- The settler (services/settlement/settler.py holds the rules, settler_service.py writes
-- these rows): its inbox, the shipments events waiting for their deal, the events it
-- could not apply, and its outbox. Every row of a batch is written in the one
-- transaction that also moves the batch's money and its load_hold rows.

-- One row per market or shipments event the settler has taken (the types it acts on),
-- inserted first in the batch's transaction: an id already here is a re-delivery and
-- does nothing. outcome says what the rules did; reason is one word when ignored or
-- refused. load_id and type let `wlex ledger check` find a load's deliveries.
CREATE TABLE settler_inbox (
    event_id text   PRIMARY KEY,
    type     text   NOT NULL,
    load_id  text,
    outcome  text   NOT NULL CHECK (outcome IN ('applied', 'ignored', 'deferred', 'refused')),
    reason   text   NOT NULL DEFAULT '',
    ts_ms    bigint NOT NULL  -- the event's ts
);
CREATE INDEX settler_inbox_load ON settler_inbox (load_id);

-- Shipments events that came before their deal.made had been applied: kept as received
-- and applied, in seq order, in the transaction that applies the deal.
CREATE TABLE settler_deferred (
    seq      bigserial PRIMARY KEY,
    event_id text   NOT NULL UNIQUE,
    load_id  text   NOT NULL,
    envelope bytea  NOT NULL,
    ts_ms    bigint NOT NULL
);
CREATE INDEX settler_deferred_load ON settler_deferred (load_id, seq);

-- Events the rules refused or whose transfers the ledger refused: nothing of them was
-- applied; kept whole for an operator (and counted in wlex_settlement_settler_events_total
-- with outcome refused). results holds the ledger's words, empty when the rules refused.
CREATE TABLE settler_refusals (
    event_id text   PRIMARY KEY,
    type     text   NOT NULL,
    load_id  text,
    reason   text   NOT NULL,
    results  text[] NOT NULL,
    envelope bytea  NOT NULL,
    ts_ms    bigint NOT NULL
);

-- The transactional outbox of the settlement events (services.common.outbox's shape:
-- seq, topic, key, value, sent_ms), relayed to `settlement` by outbox.py. Rows are
-- marked sent, not deleted: they are also the record `wlex ledger check` holds each deal
-- to (at most one deal.settled or escrow.refunded).
CREATE TABLE settler_outbox (
    seq      bigserial PRIMARY KEY,
    topic    text   NOT NULL,
    key      text,
    value    bytea  NOT NULL,
    sent_ms  bigint,
    event_id text   NOT NULL UNIQUE,
    type     text   NOT NULL,
    load_id  text   NOT NULL
);
CREATE INDEX settler_outbox_unsent ON settler_outbox (seq) WHERE sent_ms IS NULL;
CREATE INDEX settler_outbox_load ON settler_outbox (load_id, type);
