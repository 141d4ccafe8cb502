-- Bids the gateway forwarded (from /v1/stream), like `load` and `offer`: who placed
-- each bid id (the stream shows a carrier the rejection of its own bid, which names
-- only the bid id) and the lane its withdrawal must be keyed by.
CREATE TABLE bid_request (
    bid_id         text        PRIMARY KEY,
    carrier_id     text        NOT NULL REFERENCES participant,
    load_id        text        NOT NULL,
    price_fen      bigint      NOT NULL CHECK (price_fen > 0),
    origin         text        NOT NULL,
    destination    text        NOT NULL,
    vehicle_class  text        NOT NULL,
    command_id     text        NOT NULL,
    requested_ms   bigint      NOT NULL,
    withdraw_command_id   text,
    withdraw_requested_ms bigint
);
CREATE INDEX bid_request_carrier ON bid_request (carrier_id, bid_id DESC);
