-- The funding gate (services/settlement/gate.py holds the rules, gate_service.py writes
-- these rows): the participants it knows, the decision it took for each command, and
-- the hold of each funded load, which the settler then follows to its end.

-- Who may post loads. Written by participant.register / participant.suspend, which reach
-- the gate on the participant's own partition of `commands`, in order.
CREATE TABLE gate_participants (
    id         text   PRIMARY KEY,
    role       text   NOT NULL CHECK (role IN ('shipper', 'carrier', 'insurer', 'operator')),
    status     text   NOT NULL CHECK (status IN ('active', 'suspended')),
    updated_ms bigint NOT NULL  -- ts of the command that last changed it
);

-- One row per command the gate has decided, written in the same transaction as the
-- ledger transfers of the decision. The outputs are kept as the exact records the
-- decision produces (element i of each array is output i, in production order), so a
-- batch whose Kafka transaction never committed is produced again byte for byte,
-- never decided again. Topics are addresses ("orders", "settlement"): the prefix is
-- deployment configuration, not part of the decision.
CREATE TABLE gate_decisions (
    command_id     text     PRIMARY KEY,
    command_type   text     NOT NULL,
    -- Where the command was read: a command id seen again at another offset is a
    -- duplicate of an earlier command and produces nothing.
    partition      integer  NOT NULL,
    "offset"       bigint   NOT NULL,
    outcome        text     NOT NULL,
    reason         text,
    out_topics     text[]   NOT NULL,
    out_partitions integer[] NOT NULL,
    out_keys       bytea[]  NOT NULL,
    out_values     bytea[]  NOT NULL,
    ts_ms          bigint   NOT NULL,  -- the command's ts
    decided_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(out_topics) = cardinality(out_partitions)
           AND cardinality(out_topics) = cardinality(out_keys)
           AND cardinality(out_topics) = cardinality(out_values))
);

-- The hold of each funded load, shared with the settler (docs/settlement.md "The funding
-- gate"). The gate inserts it ('held') with the hold transfer and its decision; the
-- settler moves it on (dealt, released, frozen, settled, refunded), replaces hold_id and
-- hold_fen with the re-sized hold at the deal, and fills deal_id, carrier_id, price_fen.
CREATE TABLE load_hold (
    load_id         text   PRIMARY KEY,  -- also what makes a repeated load id duplicate_id
    shipper_id      text   NOT NULL,
    post_command_id text   NOT NULL,     -- the load.post command id
    lane_key        text   NOT NULL,
    mode            text   NOT NULL,
    hold_id         text   NOT NULL,     -- the load's current pending transfer
    hold_fen        bigint NOT NULL,     -- its amount
    insurer_id      text   NULL,
    premium_fen     bigint NOT NULL DEFAULT 0,
    state           text   NOT NULL CHECK (state IN
        ('held', 'dealt', 'released', 'frozen', 'settled', 'refunded')),
    deal_id         text,
    carrier_id      text,
    price_fen       bigint,
    updated_ms      bigint NOT NULL
);
