import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import envelope
from services.common.envelope import DecodeError, IdClock, decode, encode, id_ts_ms, make, new_id

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    data=st.dictionaries(st.text(), json_values, max_size=6),
    key=st.none() | st.text(),
    ts_ms=st.integers(0, 2**48 - 1),
    cause=st.none() | st.text(min_size=1),
)
def test_encode_then_decode_gives_the_same_envelope(data, key, ts_ms, cause):
    env = make("load.post", data, key, "gateway", ts_ms, cause=cause, id="e1")
    assert decode(encode(env)) == env


def test_make_fills_every_field_in_envelope_order():
    env = make("deal.made", {"x": 1}, "k", "matching", 5, cause="c", v=2, id="c:0")
    assert list(env) == list(envelope.FIELDS)
    assert env == {
        "id": "c:0",
        "type": "deal.made",
        "v": 2,
        "ts": 5,
        "key": "k",
        "source": "matching",
        "cause": "c",
        "data": {"x": 1},
    }


def test_same_envelope_encodes_to_the_same_bytes():
    a = make("load.rested", {"load_id": "L1"}, "k", "matching", 5, id="c:0")
    b = make("load.rested", {"load_id": "L1"}, "k", "matching", 5, id="c:0")
    assert encode(a) == encode(b)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"not json", b'{"a":1'])
def test_bad_bytes_raise_decode_error(raw):
    with pytest.raises(DecodeError):
        decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null"])
def test_json_that_is_not_an_object_raises_decode_error(raw):
    with pytest.raises(DecodeError, match="not a JSON object"):
        decode(raw)


def test_a_null_record_raises_decode_error():
    with pytest.raises(DecodeError):
        decode(None)


# Tests that move the clock far use their own IdClock: new_id()'s clock is the process's,
# and a step back keeps the last millisecond.


def test_id_is_a_uuid7_carrying_its_millisecond():
    ts = 1_767_225_600_123
    event_id = IdClock().next(ts)
    u = uuid.UUID(event_id)
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert id_ts_ms(event_id) == ts
    assert event_id == str(u)  # lowercase, canonical form


def test_ids_of_later_milliseconds_sort_after():
    clock = IdClock()
    ids = [clock.next(ts) for ts in range(1_767_225_600_000, 1_767_225_600_000 + 50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


def test_ids_of_one_millisecond_are_unique_and_increasing():
    clock = IdClock()
    ids = [clock.next(1_767_225_700_000) for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_ids_keep_increasing_when_the_clock_steps_back():
    clock = IdClock()
    first = clock.next(1_767_225_800_000)
    later = clock.next(1_767_225_000_000)
    assert later > first
    assert id_ts_ms(later) == 1_767_225_800_000


@given(st.lists(st.integers(0, 2**48 - 1), min_size=2, max_size=30))
def test_ids_made_in_sequence_always_increase(timestamps):
    clock = IdClock()
    ids = [clock.next(ts) for ts in timestamps]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("ts", [-1, 2**48])
def test_id_timestamp_must_fit_48_bits(ts):
    with pytest.raises(ValueError):
        IdClock().next(ts)


def test_new_id_uses_the_process_clock():
    assert new_id(1_000) < new_id(1_000)
