-- A participant's statement (the gateway's GET /v1/account/statement, through
-- settlement's read API): the transfers of one account in the order they were recorded.
-- seq is that order, given by the COPY of each batch; the two indexes serve the two sides
-- of a transfer. created_at alone cannot order a statement: a batch shares one now().
ALTER TABLE transfers ADD COLUMN seq bigserial;
CREATE UNIQUE INDEX transfers_seq ON transfers (seq);
CREATE INDEX transfers_debit_seq ON transfers (debit_account_id, seq);
CREATE INDEX transfers_credit_seq ON transfers (credit_account_id, seq);
