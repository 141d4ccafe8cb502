-- Deposits and withdrawals the gateway forwarded to settlement's funding gate. Their
-- outcome is settlement's (the ledger); GET /v1/money/{id} asks settlement for it.
CREATE TABLE money_request (
    request_id     text        PRIMARY KEY,  -- the funds.deposit / funds.withdraw command id
    participant_id text        NOT NULL REFERENCES participant,
    kind           text        NOT NULL CHECK (kind IN ('deposit', 'withdrawal')),
    amount_fen     bigint      NOT NULL CHECK (amount_fen > 0),
    bank_ref       text        NOT NULL,
    requested_ms   bigint      NOT NULL
);
CREATE INDEX money_request_participant ON money_request (participant_id, request_id DESC);
