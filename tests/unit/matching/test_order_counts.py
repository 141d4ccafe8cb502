"""Engine.order_counts: the figures behind the service's resting-orders and
open-auctions gauges."""

from __future__ import annotations

import pytest

from tests.unit.matching.builders import Market

pytestmark = pytest.mark.usefixtures("engine_cls")


def test_order_counts_follow_resting_orders_and_open_auctions():
    m = Market()
    assert m.engine.order_counts() == (0, 0)
    m.load("L1", limit_fen=500)  # rests: no offer yet
    m.offer("O1", ask_fen=900)  # rests: above the load's limit
    m.auction("A1", closes_at=5_000)
    m.auction("A2", closes_at=6_000)
    assert m.engine.order_counts() == (2, 2)
    m.cancel_load("A2")  # a cancelled auction is gone at once
    assert m.engine.order_counts() == (2, 1)
    m.offer("O2", ask_fen=400)  # takes L1: neither rests
    assert m.engine.order_counts() == (1, 1)
    m.tick(5_000)  # A1 closes (no bids)
    assert m.engine.order_counts() == (1, 0)
