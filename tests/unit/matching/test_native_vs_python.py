"""The native engine against the Python engine: the same random logs (malformed
commands and odd envelopes included) must give identical event bytes, identical
snapshots at every point, and a restore across engines must continue identically."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.matching.engine import Engine
from services.matching.native_engine import NativeEngine
from tests.unit.matching.builders import envelope, load_data, offer_data
from tests.unit.matching.logs import HypothesisDraw, LogWriter, random_log
from tests.unit.subclasses import DictSub, IntSub, StrSub

# Strings that exercise orjson's escaping: quotes, backslashes, every short escape, a
# \u00xx control, DEL (not escaped), non-ASCII and astral characters.
ODD_TEXT = ['q"uo\\te', "tab\there\nnl\r\x08\x0c", "ctl\x01\x1f\x7f", "é中😀", ""]
ODD_VALUES = [None, 0, -1, True, False, 1.5, 5.0, "7", [], {}, 2**63, 2**64, -(2**63),
              2**63 - 1, IntSub(5), StrSub("x"), *ODD_TEXT]  # fmt: skip


def oddify(d: HypothesisDraw, cmd: dict):
    """Sometimes break a command's envelope or its strings in one of many ways."""
    roll = d.int(0, 99)
    if roll < 3:
        return d.pick([None, 7, "load.post", [cmd], StrSub("c")])
    if roll < 10:
        field = d.pick(["id", "ts", "type", "key", "data"])
        if d.chance(0.3):
            del cmd[field]
        else:
            cmd[field] = d.pick(ODD_VALUES)
        return cmd
    if roll < 14:
        return DictSub(cmd) if d.chance(0.5) else cmd | {"type": StrSub(cmd["type"])}
    if roll < 22 and type(cmd.get("data")) is dict and cmd["data"]:
        data = cmd["data"]
        field = d.pick(sorted(data))
        text = d.pick(ODD_TEXT)
        if type(data[field]) is str:
            data[field] = data[field] + text
        elif type(data[field]) is dict and data[field]:  # a lane, or auction terms
            sub = data[field]
            part = d.pick(sorted(sub))
            sub[part] = f"{sub[part]}{text}" if type(sub[part]) is str else d.pick(ODD_VALUES)
        else:
            data[field] = d.pick(ODD_VALUES)
        return cmd
    if roll < 26:
        cmd["id"] = cmd["id"] + d.pick(ODD_TEXT)
        cmd["key"] = d.pick(ODD_TEXT)
    return cmd


def python_encoded(engine: Engine, commands: list) -> list[tuple[bytes | None, bytes]]:
    return engine.process_encoded(commands)


@given(st.data())
def test_same_events_and_snapshots_and_cross_restores(data):
    d = HypothesisDraw(data, ids=6)
    writer = LogWriter()
    py, native = Engine(), NativeEngine()
    for _ in range(d.int(1, 4)):
        batch = [oddify(d, writer.command(d)) for _ in range(d.int(0, 20))]
        assert native.process_encoded(batch) == python_encoded(py, batch)
        blob = py.snapshot()
        assert native.snapshot() == blob
        assert native.now == py.now
        assert native.order_counts() == py.order_counts()
        if d.chance(0.3):
            # Each restores the other's snapshot and they carry on, still identical.
            py, native = Engine.restore(native.snapshot()), NativeEngine.restore(blob)
            assert py.snapshot() == native.snapshot() == blob


@pytest.mark.parametrize("seed", range(3))
def test_long_random_logs_give_identical_bytes(seed):
    log = random_log(seed, 4000, ids=8 if seed else None)
    py, native = Engine(), NativeEngine()
    for i in range(0, len(log), 500):
        assert native.process_encoded(log[i : i + 500]) == py.process_encoded(log[i : i + 500])
        assert native.snapshot() == py.snapshot()


def _rebuilt(value, keys):
    """`value` with every dict rebuilt by `keys(dict) -> [(key, value)]`, recursively."""
    if type(value) is dict:
        return dict(keys({k: _rebuilt(v, keys) for k, v in value.items()}))
    return value


@pytest.mark.parametrize(
    "keys",
    [
        # Keys equal to the field names but other objects (as orjson and pickle make).
        lambda d: [("".join(k), v) for k, v in d.items()],
        # The fields in the other order, so each sits at another entry than last time.
        lambda d: list(d.items())[::-1],
        # An unknown key first, and a key deleted (an entry without a value).
        lambda d: [("zz", 1), *d.items()],
        lambda d: [("gone", 0), *d.items()],
        # str-subclass keys: the dict's table is no longer of exact strs.
        lambda d: [(StrSub(k), v) for k, v in d.items()],
    ],
    ids=["equal-keys", "reversed", "unknown-key", "deleted-entry", "str-subclass-keys"],
)
def test_dicts_read_in_place_or_by_lookup_alike(keys):
    # The native reader takes a field from the entry where the same key object sat in
    # the previous dict, else looks it up: every shape of dict must read the same.
    log = random_log(11, 1500, ids=8)
    shaped = [_rebuilt(cmd, keys) for cmd in log]
    for cmd in shaped:
        for d in (cmd, cmd.get("data") if type(cmd) is dict else None):
            if type(d) is dict and "gone" in d:
                del d["gone"]
    py, native = Engine(), NativeEngine()
    for i in range(0, len(log), 100):
        # Alternate shaped and literal batches: the remembered entries go stale.
        batch = (shaped if i % 200 else log)[i : i + 100]
        assert native.process_encoded(batch) == py.process_encoded(batch)
    assert native.snapshot() == py.snapshot()


def test_escapes_at_every_position_of_a_string():
    # The native writer checks text eight bytes at a time (the last word overlapping
    # the one before, shorter text byte by byte): an escaped character in any position
    # of any length is escaped.
    cases = []
    for n, ch in enumerate(['"', "\\", "\x00", "\x1f", "\n", "\x7f", "é"]):
        for length, pos in [(size, pos) for size in (1, 7, 8, 9, 16, 19) for pos in range(size)]:
            text = "a" * pos + ch + "b" * (length - 1 - pos)
            cases.append(
                envelope(f"c{n}.{length}.{pos}", "offer.post", 5, offer_data(text, carrier_id=text))
            )
            cases.append(envelope(text, "load.cancel", 5, {"load_id": text, "shipper_id": "S1"}))
    py, native = Engine(), NativeEngine()
    out = native.process_encoded(cases)
    assert out == py.process_encoded(cases)
    # Not equal by absence: each quote case came out escaped, in offers and rejections.
    assert sum(b'\\"' in value for _, value in out) >= 60 * 2


def test_process_decodes_to_the_python_engines_dicts():
    log = random_log(5, 600, ids=6)
    assert NativeEngine().process(log) == Engine().process(log)


def test_odd_envelopes_one_by_one():
    cases = [
        None,
        [],
        "x",
        {},
        {"id": "c1"},
        envelope("c1", "clock.tick", True, {}),
        envelope("c1", "clock.tick", 2**63, {}),
        envelope("c1", "clock.tick", IntSub(5), {}),
        envelope("", "load.post", 5, load_data("L9")),
        envelope(StrSub("c1"), "load.post", 5, load_data("L9")),
        envelope("c1", StrSub("load.post"), 5, load_data("L9")),
        envelope("c1", "load.post", 5, load_data("L9"), key=7),
        envelope("c1", "load.post", 5, DictSub(load_data("L9"))),
        envelope("c1", "load.post", 5, load_data(StrSub("L9"))),
        envelope("c1", "load.post", 5, load_data("L9", weight_kg=2**63)),
        envelope("c1", "load.post", 5, load_data("L9", limit_fen=True)),
        envelope("c1", "load.post", 5, load_data("L9", lane=DictSub(load_data()["lane"]))),
        envelope("c\n1", "offer.post", 5, offer_data("O\x01", carrier_id='K"1')),
        envelope("c1", "bid.place", 5, {"bid_id": "", "load_id": "A1"}),
        envelope("c1", "nope", 5, {"load_id": "L1"}),
        DictSub(envelope("c1", "clock.tick", 5, {})),
        {"id": "c2", "ts": 9, "type": "load.post", "key": None, "data": None},
        {"id": "c3", "ts": None, "type": "offer.cancel", "data": {"offer_id": "O\t"}},
        # Last, as they move the clock far: ints of one, two and three 30-bit digits
        # (the native reader takes the first two kinds from the int object itself).
        envelope("c1", "load.post", 2**45, load_data("L8", weight_kg=-(2**40))),
        envelope("c1", "load.post", 2**45, load_data("L8", weight_kg=2**60 - 1, limit_fen=2**30)),
        envelope(
            "c1", "load.post", 2**45 + 1, load_data("L7", weight_kg=2**60, limit_fen=-(2**61))
        ),
    ]
    py, native = Engine(), NativeEngine()
    values = []
    for cmd in cases:
        out = native.process_encoded([cmd])
        assert out == py.process_encoded([cmd]), cmd
        values += [value for _, value in out]
    assert native.snapshot() == py.snapshot()
    # The escapes were exercised, not just equal by absence.
    assert any(b'"O\\u0001"' in v for v in values) and any(b'K\\"1' in v for v in values)
