"""NativeEngine.process_raw (Kafka value bytes in) against the service's reference
path: decode + envelope validation + Engine.process_encoded (the Python engine), with
the same dead letters (same records, same reason words). Random logs are encoded in
many ways (orjson; the stdlib with ASCII escapes, surrogate pairs included; spacing),
then some values are made hostile: bad JSON, duplicate keys, big ints, floats, odd
escapes, non-objects, missing or extra envelope fields, deep nesting, long strings."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.deadletter import INVALID, UNDECODABLE
from services.common.kafka import decode_valid
from services.matching.engine import Engine
from services.matching.engines import event_type
from services.matching.envelope_check import plainly_valid, validate_envelope
from services.matching.native_engine import NativeEngine
from tests.unit.matching.builders import envelope, load_data, offer_data
from tests.unit.matching.logs import HypothesisDraw, LogWriter, random_log
from tests.unit.matching.test_native_vs_python import oddify


@dataclass(frozen=True)
class Rec:
    """What DeadLetter keeps of a record, for the comparison."""

    value: bytes | None
    index: int


class Path:
    """One engine fed through process_raw with the service's fallback; remembers the
    dead letters and how many values the fallback saw."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.dead = []
        self.fallbacks = 0

    def fallback_for(self, values: list):
        """The service's fallback for a batch of values (dead letters kept here)."""
        records = [Rec(v, i) for i, v in enumerate(values)]

        def fallback(value, i):
            assert value is records[i].value
            self.fallbacks += 1
            return decode_valid(records[i], validate_envelope, self.dead)

        return fallback

    def feed(self, values: list) -> list:
        start = len(self.dead)
        out = self.engine.process_raw(values, self.fallback_for(values))
        self.dead[start:] = [(d.record.index, d.reason) for d in self.dead[start:]]
        return out


def reference(engine: Engine, values: list, dead: list) -> list:
    """decode_batch's steps then process_encoded: what the service did before."""
    commands = []
    for i, value in enumerate(values):
        letters = []
        env = decode_valid(Rec(value, i), validate_envelope, letters)
        dead += [(i, d.reason) for d in letters]
        if env is not None:
            commands.append(env)
    return engine.process_encoded(commands)


def encode(rng: random.Random, cmd) -> bytes:
    """cmd as JSON in one of several spellings (orjson cannot write every odd value)."""
    how = rng.randrange(4)
    try:
        if how == 0:
            return orjson.dumps(cmd)
        if how == 1:
            return json.dumps(cmd, ensure_ascii=True).encode()  # \\uXXXX, surrogate pairs
        if how == 2:
            return json.dumps(cmd, ensure_ascii=False, indent=rng.choice([None, 1])).encode(
                "utf-8", "surrogatepass"
            )
        return b" \n\t" + json.dumps(cmd, separators=(" ,", ": ")).encode() + b"\r\n"
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return json.dumps(cmd, default=str).encode("utf-8", "surrogatepass")


HOSTILE_WHOLE = [None, b"", b"null", b"[]", b"1", b'"x"', b"{", b"{}", b"\xef\xbb\xbf{}",
                 b"[" * 5000, b"\xff\xfe", b"{\"id\":1}"]  # fmt: skip
TEXT_ESCAPES = ["\\/", "\\u00e9", "\\u00E9", "\\ud83d\\ude00", "\\ud800", "\\udc00x",
                "\\u0000", "\\b\\f", "\\x", "\\u12", "\x01", "\\ud83dA"]  # fmt: skip
NUMBERS = [b"-0", b"01", b"1.0", b"1e3", b"1E3", b"9223372036854775807",
           b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
           b"18446744073709551616", b"-", b"1.", b"0x10", b"NaN", b"Infinity",
           b"true", b"null"]  # fmt: skip


def dumps(d) -> bytes:
    try:
        return orjson.dumps(d)
    except TypeError:  # an int beyond 64 bits
        return json.dumps(d).encode()


def hostile(rng: random.Random, value: bytes) -> bytes | None:
    """value broken (or oddly spelled) in one of many ways."""
    roll = rng.randrange(14)
    if roll == 0:
        return rng.choice(HOSTILE_WHOLE)
    if roll == 1:  # a duplicate key, at the top or inside data
        at = value.find(b"{", 1) + 1 if rng.random() < 0.5 and b'"data":{"' in value else 1
        dup = rng.choice([b'"id":"dup",', b'"ts":5,', b'"load_id":"X",', b'"key":null,'])
        return value[:at] + dup + value[at:]
    if roll == 2:  # an extra envelope field
        return b'{"extra":1,' + value[1:]
    if roll == 3:  # a missing one
        d = orjson.loads(value)
        d.pop(rng.choice(sorted(d)), None)
        return dumps(d)
    if roll == 4:  # a number spelled oddly where one is (v, ts, an amount, a time)
        spots = list(re.finditer(rb'":(-?[0-9]+)', value))
        if not spots:
            return value
        at = rng.choice(spots)
        return value[: at.start(1)] + rng.choice(NUMBERS) + value[at.end(1) :]
    if roll == 5:  # an escape inside a string
        at = value.find(b'":"') + 3
        return value[:at] + rng.choice(TEXT_ESCAPES).encode() + value[at:]
    if roll == 6:  # cut short
        return value[: rng.randrange(len(value))]
    if roll == 7:  # one byte changed
        i = rng.randrange(len(value))
        return value[:i] + bytes([rng.randrange(256)]) + value[i + 1 :]
    if roll == 8:  # deep nesting inside data
        depth = rng.choice([10, 30, 31, 32, 33, 60])
        return value.replace(
            b'"data":{', b'"data":{"deep":' + b"[" * depth + b"]" * depth + b",", 1
        )
    if roll == 9:  # many members in data
        extra = b"".join(b'"f%d":%d,' % (i, i) for i in range(rng.choice([60, 63, 64, 65, 80])))
        return value.replace(b'"data":{', b'"data":{' + extra, 1)
    if roll == 10:  # long strings at the envelope's limits
        d = orjson.loads(value)
        field, limit = rng.choice([("id", 160), ("key", 256), ("source", 64), ("cause", 160)])
        d[field] = rng.choice(["a", "é", "😀"]) * (limit + rng.choice([-1, 0, 1]))
        return dumps(d)
    if roll == 11:  # an odd type name
        d = orjson.loads(value)
        d["type"] = rng.choice(["load.post.", "Load.post", "load_.post", "a.b", "_a.b",
                                "load", "load..post", "a" * 31 + "." + "b" * 33, "lo ad.post"])  # fmt: skip
        return dumps(d)
    if roll == 12:  # an odd envelope value
        d = orjson.loads(value)
        d[rng.choice(["v", "ts", "key", "source", "cause", "data", "id"])] = rng.choice(
            [None, 0, -1, True, 1.5, "", "7", [], {}, 2**63, 2**64]
        )
        return dumps(d)
    return value


def check(values: list, py: Engine, native: NativeEngine, path: Path, ref_dead: list) -> None:
    assert path.feed(values) == reference(py, values, ref_dead)
    assert path.dead == ref_dead
    assert native.snapshot() == py.snapshot()


@settings(max_examples=150)
@given(st.data())
def test_random_logs_as_bytes_give_the_reference_outputs_and_dead_letters(data):
    d = HypothesisDraw(data, ids=6)
    rng = random.Random(d.int(0, 2**32))
    writer = LogWriter()
    py, native = Engine(), NativeEngine()
    path, ref_dead = Path(native), []
    for _ in range(d.int(1, 3)):
        values = []
        for _ in range(d.int(0, 20)):
            value = encode(rng, oddify(d, writer.command(d)))
            if value[:1] == b"{" and rng.random() < 0.3:
                value = hostile(rng, value)
            values.append(value)
        check(values, py, native, path, ref_dead)


@pytest.mark.parametrize("seed", range(4))
def test_long_logs_with_hostile_values(seed):
    rng = random.Random(seed)
    log = random_log(seed, 3000, ids=8 if seed else None)
    values = [encode(rng, c) for c in log]
    values = [hostile(rng, v) if rng.random() < 0.2 else v for v in values]
    py, native = Engine(), NativeEngine()
    path, ref_dead = Path(native), []
    for i in range(0, len(values), 500):
        check(values[i : i + 500], py, native, path, ref_dead)
    assert {reason for _, reason in ref_dead} == {UNDECODABLE, INVALID}


def test_plainly_valid_envelopes_never_reach_the_fallback():
    """The service's input (orjson-encoded envelopes) is read natively: only what the
    envelope check does not plainly accept goes to Python."""
    log = random_log(7, 2000, ids=6)
    values = [orjson.dumps(c) for c in log]
    path, ref_dead = Path(NativeEngine()), []
    assert path.feed(values) == reference(Engine(), values, ref_dead)
    assert path.dead == ref_dead
    # The rest of the fallbacks: a float or an int beyond i64 in the data (the log's
    # broken fields), which the native parser leaves to orjson.
    odd_numbers = sum(
        plainly_valid(c) and (b":1.5" in v or b":9223372036854775808" in v)
        for c, v in zip(log, values, strict=True)
    )
    assert path.fallbacks == sum(not plainly_valid(c) for c in log) + odd_numbers
    assert path.fallbacks < len(log) // 10


@pytest.mark.parametrize(
    "text",
    [b'{"id":"c\\u00e9\\ud83d\\ude00\\/\\"","type":"load.post","v":1,"ts":5,"key":"k\\n",'
     b'"source":"s","cause":null,"data":%s}',
     b' {"data":%s, "cause":"x", "source":"s", "key":null, "ts":-0, "v":1, "type":"load.post", '
     b'"id":"c1"} '],
)  # fmt: skip
def test_escapes_and_spacing_are_read_natively(text):
    value = text % orjson.dumps(load_data("L\\u0001"))
    path = Path(NativeEngine())
    out = path.feed([value])
    assert out == Engine().process_encoded([orjson.loads(value)])
    assert path.fallbacks == 0


def test_odd_values_one_by_one():
    cases = [None, b"", b"{}", b"[]", b'{"id":"c1"}', b"\xff",
             orjson.dumps(envelope("c1", "clock.tick", 2**63 - 1, {})),
             orjson.dumps(envelope("c1", "clock.tick", 2**64 - 1, {})),
             orjson.dumps(envelope("c1", "offer.post", 5, offer_data("O\x01", carrier_id='K"1'))),
             json.dumps(envelope("c1", "load.post", 5, load_data("L\ud800"))).encode()]  # fmt: skip
    py, native = Engine(), NativeEngine()
    path, ref_dead = Path(native), []
    check(cases, py, native, path, ref_dead)
    assert [i for i, _ in ref_dead] == [0, 1, 2, 3, 4, 5, 9]
    assert path.fallbacks == 8  # all but the two plain envelopes


@pytest.mark.parametrize("seed", range(2))
def test_counts_by_type_are_added_as_the_events_say(seed):
    """process_raw's counts: per type, the events it returned (read back from their
    bytes), added to what the dict held; the same for both engines."""
    rng = random.Random(seed)
    values = [encode(rng, c) for c in random_log(seed, 2000)]
    for engine in (Engine(), NativeEngine()):
        counts = {"deal.made": 1000, "unrelated": 7}
        path = Path(engine)
        events = []
        for i in range(0, len(values), 500):
            events += engine.process_raw(
                values[i : i + 500], path.fallback_for(values[i : i + 500]), counts
            )
        want = Counter(event_type(v) for _, v in events)
        want.update({"deal.made": 1000, "unrelated": 7})
        assert len(want) > 4 and counts == want
