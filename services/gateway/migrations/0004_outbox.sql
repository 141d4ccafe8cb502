-- Commands the gateway makes outside a request's Kafka send: participant.register and
-- participant.suspend, written in the same transaction as the participant row (by the
-- API or by `wlex participants`), relayed to `commands` by services.common.outbox.
CREATE TABLE outbox (
    seq     bigserial PRIMARY KEY,
    topic   text      NOT NULL,
    key     text,
    value   bytea     NOT NULL,
    sent_ms bigint
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_ms IS NULL;
