"""The pure parts of the Kafka adapter: decoding batches, dead-letter records, ids."""

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.common import schemas
from services.common.deadletter import (
    INVALID,
    UNDECODABLE,
    DeadLetter,
    dead_letter_headers,
    dead_letter_key,
)
from services.common.envelope import encode, make
from services.common.kafka import (
    decode_batch,
    make_consumer,
    transactional_id_for,
    transactional_ids_for,
)

from .samples import LANE_KEY

TP0 = TopicPartition("t.orders", 0)
TP1 = TopicPartition("t.orders", 1)


def record(tp, offset, value, key=b"k"):
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 1_767_225_600_000, 0, key, value, None, 1, 1, []
    )


def good(i):
    return encode(make("load.rested", {"load_id": f"L{i}"}, LANE_KEY, "test", 1, id=f"e{i}"))


def test_decode_batch_keeps_valid_messages_with_their_records():
    fetched = {
        TP0: [record(TP0, 5, good(1)), record(TP0, 6, good(2))],
        TP1: [record(TP1, 9, good(3))],
    }
    batch = decode_batch(fetched)
    assert [m["id"] for m in batch.messages] == ["e1", "e2", "e3"]
    assert [(r.partition, r.offset) for r in batch.records] == [(0, 5), (0, 6), (1, 9)]
    assert batch.offsets == {TP0: 7, TP1: 10}
    assert batch.first_offsets == {TP0: 5, TP1: 9}
    assert not batch.dead and len(batch) == 3


def test_decode_batch_dead_letters_bad_bytes_and_invalid_envelopes_and_goes_on():
    invalid = encode(make("load.rested", {"load_id": 7}, LANE_KEY, "test", 1, id="bad"))
    fetched = {
        TP0: [
            record(TP0, 0, b"\xffnot json"),
            record(TP0, 1, invalid),
            record(TP0, 2, good(3)),
            record(TP0, 3, None),
        ]
    }
    batch = decode_batch(fetched)
    assert [m["id"] for m in batch.messages] == ["e3"]
    assert [(d.record.offset, d.reason) for d in batch.dead] == [
        (0, UNDECODABLE),
        (1, INVALID),
        (3, UNDECODABLE),
    ]
    assert "data.load_id must be string" in batch.dead[1].error
    assert batch.offsets == {TP0: 4}  # dead letters are consumed too


def test_decode_batch_with_envelope_only_validation_passes_bad_data_through():
    invalid = encode(make("load.rested", {"load_id": 7}, LANE_KEY, "test", 1, id="bad"))
    batch = decode_batch({TP0: [record(TP0, 0, invalid)]}, validate=schemas.validate_envelope)
    assert [m["id"] for m in batch.messages] == ["bad"] and not batch.dead


def test_empty_fetch_gives_an_empty_batch():
    batch = decode_batch({TP0: []})
    assert len(batch) == 0 and batch.offsets == {}


def test_dead_letter_headers_say_where_from_and_why():
    letter = DeadLetter(record(TP1, 42, b"x"), INVALID, "e" * 5000)
    headers = dict(dead_letter_headers(letter, "matching", "matching"))
    assert headers["dlq.topic"] == b"t.orders"
    assert headers["dlq.partition"] == b"1"
    assert headers["dlq.offset"] == b"42"
    assert headers["dlq.reason"] == b"invalid"
    assert headers["dlq.group"] == b"matching"
    assert len(headers["dlq.error"]) == 1000  # bounded


def test_dead_letter_key_is_the_original_or_the_source_partition():
    assert dead_letter_key(record(TP1, 0, b"x", key=b"lane")) == b"lane"
    assert dead_letter_key(record(TP1, 0, b"x", key=None)) == b"t.orders/1"


def test_transactional_id_names_the_partition_set():
    assert transactional_id_for("matching", "wlex.orders", [0]) == "matching@wlex.orders#0"
    assert (
        transactional_id_for("matching", "wlex.orders", [7, 3, 0, 1, 2, 9, 10, 2])
        == "matching@wlex.orders#0-3,7,9-10"
    )
    with pytest.raises(ValueError):
        transactional_id_for("matching", "wlex.orders", [])


def test_transactional_ids_start_with_the_single_producers_id():
    assert transactional_ids_for("matching", "wlex.orders", [0, 2], 1) == [
        "matching@wlex.orders#0,2"
    ]
    assert transactional_ids_for("matching", "wlex.orders", [0, 2], 3) == [
        "matching@wlex.orders#0,2",
        "matching@wlex.orders#0,2+1",
        "matching@wlex.orders#0,2+2",
    ]


async def test_consumer_takes_topics_or_partitions_not_both():
    with pytest.raises(ValueError):
        make_consumer("127.0.0.1:1", group_id="g")
    with pytest.raises(ValueError):
        make_consumer("127.0.0.1:1", group_id="g", topics=["a"], partitions=[TP0])
