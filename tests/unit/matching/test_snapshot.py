"""Snapshots and determinism: restore-and-continue equals the uninterrupted run, byte
for byte, and the same log always gives the same bytes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.matching.engine import Engine
from tests.unit.matching.builders import resting
from tests.unit.matching.logs import random_log

N = 1500


def _bytes(events) -> bytes:
    return orjson.dumps(events)


@pytest.fixture(scope="module")
def log():
    return random_log(11, N, ids=8)


@pytest.fixture(scope="module")
def uninterrupted(log):
    """The Python engine's events: both engines must give exactly these bytes."""
    return _bytes(Engine().process(log))


def test_same_log_twice_gives_the_same_bytes(log, uninterrupted, engine_cls):
    engine = engine_cls()
    assert _bytes(engine.process(log)) == uninterrupted
    other = engine_cls()
    other.process(log)
    assert other.snapshot() == engine.snapshot()


def test_batching_does_not_change_the_events(log, uninterrupted, engine_cls):
    engine = engine_cls()
    events = []
    for i in range(0, N, 7):
        events.extend(engine.process(log[i : i + 7]))
    assert _bytes(events) == uninterrupted


# engine_cls is function-scoped but constant within one parametrized test.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, N))
def test_snapshot_restore_continue_equals_the_uninterrupted_run(
    log, uninterrupted, cut, engine_cls
):
    first = engine_cls()
    events = first.process(log[:cut])
    blob = first.snapshot()
    second = engine_cls.restore(blob)
    assert second.snapshot() == blob
    events += second.process(log[cut:])
    assert _bytes(events) == uninterrupted


def test_restored_engine_ends_in_the_same_state(log, engine_cls):
    whole = engine_cls()
    whole.process(log)
    for cut in (1, N // 3, N // 2, N - 1):
        first = engine_cls()
        first.process(log[:cut])
        second = engine_cls.restore(first.snapshot())
        second.process(log[cut:])
        assert second.snapshot() == whole.snapshot()


def test_snapshot_keeps_resting_orders_bids_and_the_clock(engine_cls):
    from tests.unit.matching.builders import Market

    m = Market()
    m.load("L1", ts=100, limit_fen=900)
    m.offer("O1", ask_fen=5000, consolidate=True)
    m.auction("A1", closes_at=5000, reserve_fen=2000, instant_fen=100)
    m.bid("B1", price_fen=1500)
    restored = engine_cls.restore(m.engine.snapshot())
    assert restored.now == 100
    assert restored.snapshot() == m.engine.snapshot()
    ids = resting(restored)
    assert ids["loads"] == ["L1"] and ids["auctions"] == ["A1"] and ids["offers"] == ["O1"]
    assert ids["bids"] == ["B1"]


def test_restore_refuses_an_unknown_format(engine_cls):
    with pytest.raises(ValueError):
        engine_cls.restore(orjson.dumps({"format": 99}))
