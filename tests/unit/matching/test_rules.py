"""One example per matching rule of DESIGN "Matching rules (the core)"."""

from __future__ import annotations

import pytest

from tests.unit.matching.builders import (
    KEY,
    LANE,
    OTHER_KEY,
    OTHER_LANE,
    Market,
    envelope,
    offer_data,
    only,
    resting,
    types,
)

pytestmark = pytest.mark.usefixtures("engine_cls")

# -- envelope ------------------------------------------------------------------------


def test_outcome_envelope_names_its_cause_lane_and_time():
    m = Market()
    [ev] = m.load("L1", ts=1234)
    assert ev == {
        "id": "c1:0",
        "type": "load.rested",
        "v": 1,
        "ts": 1234,
        "key": KEY,
        "source": "matching",
        "cause": "c1",
        "data": {"load_id": "L1"},
    }


def test_outputs_of_one_command_are_numbered_from_zero_timer_events_first():
    m = Market()
    m.load("L1", pickup_to=500)
    m.offer("O1", ask_fen=5000)  # too dear for L2 below: rests
    events = m.offer("O2", ts=600, ask_fen=900, consolidate=True)
    assert [e["id"] for e in events] == ["c3:0", "c3:1"]
    assert types(events) == ["order.expired", "offer.rested"]
    assert all(e["cause"] == "c3" and e["ts"] == 600 for e in events)


def test_clock_takes_the_latest_ts_and_never_goes_back():
    m = Market()
    m.load("L1", ts=1000)
    [ev] = m.load("L2", ts=400)
    assert ev["ts"] == 1000


def test_event_key_is_the_lane_of_the_order_concerned():
    m = Market()
    events = m.send("load.post", {**_load("L1"), "lane": dict(OTHER_LANE)}, key="whatever")
    assert events[0]["key"] == OTHER_KEY


# -- market loads and offers ------------------------------------------------------


def _load(load_id, **kw):
    from tests.unit.matching.builders import load_data

    return load_data(load_id, **kw)


def test_market_load_rests_when_no_offer_is_eligible():
    m = Market()
    assert types(m.load("L1")) == ["load.rested"]


def test_load_takes_lowest_ask_then_earliest():
    m = Market()
    m.offer("O1", ask_fen=900)
    m.offer("O2", ask_fen=700)
    m.offer("O3", ask_fen=700)
    m.offer("O4", ask_fen=800)
    deal = only(m.load("L1", limit_fen=1000))
    assert deal["offer_id"] == "O2"
    assert only(m.load("L2", limit_fen=1000))["offer_id"] == "O3"
    assert only(m.load("L3", limit_fen=1000))["offer_id"] == "O4"


def test_load_trades_at_the_offers_ask():
    m = Market()
    m.offer("O1", ask_fen=700, carrier_id="K9")
    [ev] = m.load("L1", limit_fen=1000, shipper_id="S7")
    assert ev["type"] == "deal.made"
    assert ev["key"] == KEY
    assert ev["data"] == {
        "deal_id": "deal:L1",
        "load_id": "L1",
        "offer_id": "O1",
        "bid_id": None,
        "shipper_id": "S7",
        "carrier_id": "K9",
        "price_fen": 700,
        "lane": LANE,
    }


def test_offer_takes_highest_limit_then_earliest():
    m = Market()
    m.load("L1", limit_fen=900)
    m.load("L2", limit_fen=1200)
    m.load("L3", limit_fen=1200)
    m.load("L4", limit_fen=1000)
    assert only(m.offer("O1"))["load_id"] == "L2"
    assert only(m.offer("O2"))["load_id"] == "L3"
    assert only(m.offer("O3"))["load_id"] == "L4"


def test_offer_trades_at_the_loads_limit():
    m = Market()
    m.load("L1", limit_fen=1200)
    deal = only(m.offer("O1", ask_fen=800))
    assert deal["price_fen"] == 1200
    assert deal["deal_id"] == "deal:L1"
    assert deal["offer_id"] == "O1" and deal["bid_id"] is None


def test_offer_rests_with_its_capacity_when_no_deal():
    m = Market()
    assert only(m.offer("O1", capacity_kg=7000, capacity_dm3=9000)) == {
        "offer_id": "O1",
        "remaining_kg": 7000,
        "remaining_dm3": 9000,
    }


def test_non_consolidating_offer_stops_after_its_first_deal_and_leaves_the_book():
    m = Market()
    m.load("L1")
    m.load("L2")
    assert types(m.offer("O1", consolidate=False)) == ["deal.made"]
    assert types(m.load("L3")) == ["load.rested"]
    assert resting(m.engine)["offers"] == []


def test_resting_non_consolidating_offer_leaves_after_one_load():
    m = Market()
    m.offer("O1")
    assert types(m.load("L1")) == ["deal.made"]
    assert types(m.load("L2")) == ["load.rested"]


def test_consolidating_offer_takes_loads_while_one_fits():
    m = Market()
    m.load("L1", weight_kg=4000, limit_fen=1000)
    m.load("L2", weight_kg=7000, limit_fen=1100)
    m.load("L3", weight_kg=3000, limit_fen=900)
    events = m.offer("O1", capacity_kg=10_000, consolidate=True)
    # L2 first (highest limit), then L1 does not fit in 3000 kg, L3 does.
    assert [e["data"]["load_id"] for e in events] == ["L2", "L3"]
    assert types(events) == ["deal.made", "deal.made"]


def test_consolidating_offer_rests_while_both_remainders_are_above_zero():
    m = Market()
    m.load("L1", weight_kg=4000, volume_dm3=1000)
    events = m.offer("O1", capacity_kg=10_000, capacity_dm3=5000, consolidate=True)
    assert types(events) == ["deal.made", "offer.rested"]
    assert events[1]["data"] == {"offer_id": "O1", "remaining_kg": 6000, "remaining_dm3": 4000}
    assert events[1]["id"] == "c2:1"


def test_consolidating_offer_leaves_when_a_remainder_reaches_zero():
    m = Market()
    m.load("L1", weight_kg=4000, volume_dm3=5000)
    assert types(m.offer("O1", capacity_kg=10_000, capacity_dm3=5000, consolidate=True)) == [
        "deal.made"
    ]
    assert types(m.load("L2", weight_kg=1, volume_dm3=1)) == ["load.rested"]


def test_resting_consolidating_offer_carries_loads_until_full():
    m = Market()
    m.offer("O1", capacity_kg=5000, capacity_dm3=50_000, consolidate=True)
    assert types(m.load("L1", weight_kg=2000)) == ["deal.made"]
    assert types(m.load("L2", weight_kg=4000)) == ["load.rested"]  # 3000 kg left
    assert types(m.load("L3", weight_kg=3000)) == ["deal.made"]  # exactly full: leaves
    assert types(m.load("L4", weight_kg=1)) == ["load.rested"]


def test_load_skips_offers_it_does_not_fit_and_takes_the_next_best():
    m = Market()
    m.offer("O1", ask_fen=500, capacity_kg=500)  # too light
    m.offer("O2", ask_fen=500, capacity_dm3=100)  # too small
    m.offer("O3", ask_fen=500, available_from=20_000, available_to=30_000)  # later
    m.offer("O4", ask_fen=500, available_from=0, available_to=50)  # before pickup
    m.offer("O5", ask_fen=1500)  # too dear
    m.offer("O6", ask_fen=500, lane=dict(OTHER_LANE))  # other lane
    m.offer("O7", ask_fen=950)
    deal = only(m.load("L1", pickup_from=100, pickup_to=10_000, limit_fen=1000))
    assert deal["offer_id"] == "O7"


def test_offer_skips_loads_that_do_not_fit_it():
    m = Market()
    m.load("L1", limit_fen=2000, weight_kg=20_000)
    m.load("L2", limit_fen=2000, volume_dm3=90_000)
    m.load("L3", limit_fen=2000, pickup_from=20_000, pickup_to=30_000)
    m.load("L4", limit_fen=700)
    m.load("L5", limit_fen=1500)
    assert only(m.offer("O1", ask_fen=800))["load_id"] == "L5"


def test_windows_that_touch_overlap():
    m = Market()
    m.offer("O1", available_from=0, available_to=1000)
    assert types(m.load("L1", pickup_from=1000, pickup_to=2000)) == ["deal.made"]
    m.offer("O2", available_from=2000, available_to=3000)
    assert types(m.load("L2", pickup_from=1000, pickup_to=2000)) == ["deal.made"]


def test_price_equal_to_limit_trades():
    m = Market()
    m.offer("O1", ask_fen=1000)
    assert only(m.load("L1", limit_fen=1000))["price_fen"] == 1000


def test_auction_loads_never_trade_against_offers():
    m = Market()
    m.auction("A1", closes_at=5000)
    assert types(m.offer("O1", ask_fen=1)) == ["offer.rested"]


def test_lanes_do_not_trade_with_each_other():
    m = Market()
    m.offer("O1", lane=dict(OTHER_LANE))
    assert types(m.load("L1")) == ["load.rested"]
    assert types(m.offer("O2", lane=dict(OTHER_LANE))) == ["offer.rested"]


# -- expiry ------------------------------------------------------------------------


def test_market_load_expires_once_pickup_to_is_before_now():
    m = Market()
    m.load("L1", pickup_to=500)
    assert m.tick(500) == []
    [ev] = m.tick(501)
    assert ev["type"] == "order.expired" and ev["data"] == {"ref_id": "L1"}
    assert ev["key"] == KEY and ev["id"] == "c3:0" and ev["ts"] == 501


def test_offer_expires_once_available_to_is_before_now():
    m = Market()
    m.offer("O1", available_to=500)
    assert m.tick(500) == []
    assert only(m.tick(501)) == {"ref_id": "O1"}
    assert types(m.load("L1", pickup_from=0)) == ["load.rested"]


def test_timers_fire_by_deadline_then_arrival():
    m = Market()
    m.load("L1", pickup_to=700)
    m.offer("O1", available_to=600, ask_fen=5000)
    m.load("L2", pickup_to=600)
    m.auction("A1", closes_at=650)
    events = m.tick(1000)
    assert [(e["type"], e["data"].get("ref_id", e["data"].get("load_id"))) for e in events] == [
        ("order.expired", "O1"),
        ("order.expired", "L2"),
        ("auction.closed", "A1"),
        ("order.expired", "L1"),
    ]


def test_expiry_and_close_at_the_same_deadline_go_by_arrival():
    m = Market()
    m.auction("A1", closes_at=600, pickup_to=600)
    m.load("L1", pickup_to=600)
    assert types(m.tick(600)) == ["auction.closed"]
    assert types(m.tick(601)) == ["order.expired"]
    m = Market()
    m.load("L1", pickup_to=600)
    m.auction("A1", closes_at=600, pickup_to=600)
    assert [e["type"] for e in m.tick(601)] == ["order.expired", "auction.closed"]


def test_timers_fire_before_the_command_is_handled():
    m = Market()
    m.offer("O1", available_to=500)
    events = m.load("L1", ts=501)
    assert types(events) == ["order.expired", "load.rested"]


def test_tick_does_nothing_but_move_the_clock():
    m = Market()
    assert m.tick(10) == []
    assert m.engine.now == 10


# -- auctions ----------------------------------------------------------------------


def test_auction_load_opens_an_auction():
    m = Market()
    [ev] = m.auction("A1", closes_at=5000, sealed=True)
    assert ev["type"] == "auction.opened" and ev["key"] == KEY
    assert ev["data"] == {"load_id": "A1", "closes_at": 5000, "sealed": True}


def test_bid_accepted_shows_the_best_bid_of_an_open_auction():
    m = Market()
    m.auction("A1")
    [ev] = m.bid("B1", price_fen=900, carrier_id="K2")
    assert ev["type"] == "bid.accepted" and ev["key"] == KEY
    assert ev["data"] == {
        "bid_id": "B1",
        "load_id": "A1",
        "carrier_id": "K2",
        "price_fen": 900,
        "best_fen": 900,
    }
    assert only(m.bid("B2", price_fen=850))["best_fen"] == 850


def test_sealed_auction_hides_the_best_bid():
    m = Market()
    m.auction("A1", sealed=True)
    assert only(m.bid("B1", price_fen=900))["best_fen"] is None


def test_sealed_auction_takes_bids_that_do_not_beat_the_best():
    m = Market()
    m.auction("A1", sealed=True)
    m.bid("B1", price_fen=900)
    assert types(m.bid("B2", price_fen=900)) == ["bid.accepted"]
    assert types(m.bid("B3", price_fen=950)) == ["bid.accepted"]


def test_auction_closes_with_the_lowest_bid_earliest_first():
    m = Market()
    m.auction("A1", closes_at=5000, sealed=True, shipper_id="S3")
    m.bid("B1", price_fen=900, carrier_id="K1")
    m.bid("B2", price_fen=800, carrier_id="K2")
    m.bid("B3", price_fen=800, carrier_id="K3")
    events = m.tick(5000)
    assert types(events) == ["deal.made", "auction.closed"]
    assert events[0]["data"] == {
        "deal_id": "deal:A1",
        "load_id": "A1",
        "offer_id": None,
        "bid_id": "B2",
        "shipper_id": "S3",
        "carrier_id": "K2",
        "price_fen": 800,
        "lane": LANE,
    }
    assert events[1]["data"] == {"load_id": "A1", "bid_id": "B2", "price_fen": 800}
    assert [e["key"] for e in events] == [KEY, KEY]


def test_auction_closes_at_closes_at_not_before():
    m = Market()
    m.auction("A1", closes_at=5000)
    assert m.tick(4999) == []
    assert types(m.tick(5000)) == ["auction.closed"]


def test_auction_without_bids_closes_with_nulls():
    m = Market()
    m.auction("A1", closes_at=5000)
    assert only(m.tick(6000)) == {"load_id": "A1", "bid_id": None, "price_fen": None}


def test_closed_auction_is_gone():
    m = Market()
    m.auction("A1", closes_at=5000)
    m.bid("B1")
    m.tick(5000)
    assert only(m.bid("B2"))["reason"] == "unknown_order"
    assert only(m.cancel_load("A1"))["reason"] == "unknown_order"
    assert types(m.bid("B1", load_id="A1")) == ["order.rejected"]


def test_bid_at_or_under_instant_price_wins_at_once():
    m = Market()
    m.auction("A1", instant_fen=700, reserve_fen=1000)
    m.bid("B1", price_fen=800)
    events = m.bid("B2", price_fen=700, carrier_id="K2")
    assert types(events) == ["bid.accepted", "deal.made", "auction.closed"]
    assert [e["id"] for e in events] == ["c3:0", "c3:1", "c3:2"]
    assert events[1]["data"]["bid_id"] == "B2" and events[1]["data"]["price_fen"] == 700
    assert events[2]["data"] == {"load_id": "A1", "bid_id": "B2", "price_fen": 700}
    assert m.tick(10**6) == []


def test_instant_win_in_a_sealed_auction():
    m = Market()
    m.auction("A1", instant_fen=700, sealed=True)
    m.bid("B1", price_fen=800)
    assert types(m.bid("B2", price_fen=650)) == ["bid.accepted", "deal.made", "auction.closed"]


def test_withdrawn_bid_does_not_win():
    m = Market()
    m.auction("A1", closes_at=5000)
    m.bid("B1", price_fen=900)
    m.bid("B2", price_fen=800, carrier_id="K2")
    assert only(m.withdraw("B2", carrier_id="K2")) == {"ref_id": "B2"}
    # The best is 900 again: a bid of 850 improves it.
    assert only(m.bid("B3", price_fen=850))["best_fen"] == 850
    events = m.tick(5000)
    assert events[0]["data"]["bid_id"] == "B3"


# -- cancels ------------------------------------------------------------------------


def test_cancel_removes_a_resting_load():
    m = Market()
    m.load("L1")
    [ev] = m.cancel_load("L1")
    assert ev["type"] == "order.cancelled" and ev["data"] == {"ref_id": "L1"}
    assert ev["key"] == KEY
    assert types(m.offer("O1")) == ["offer.rested"]


def test_cancel_removes_a_resting_offer():
    m = Market()
    m.offer("O1")
    assert only(m.cancel_offer("O1")) == {"ref_id": "O1"}
    assert types(m.load("L1")) == ["load.rested"]


def test_cancelling_an_open_auction_drops_its_bids():
    m = Market()
    m.auction("A1", closes_at=5000)
    m.bid("B1")
    assert types(m.cancel_load("A1")) == ["order.cancelled"]
    assert only(m.withdraw("B1"))["reason"] == "unknown_order"
    assert m.tick(6000) == []
    # The bid id is free again for another auction.
    m.auction("A2", closes_at=9000)
    assert types(m.bid("B1", load_id="A2")) == ["bid.accepted"]


def test_cancelled_order_key_is_its_lane_not_the_commands():
    m = Market()
    m.offer("O1", lane=dict(OTHER_LANE))
    events = m.send("offer.cancel", {"offer_id": "O1", "carrier_id": "K1"}, key=KEY)
    assert events[0]["key"] == OTHER_KEY


def test_traded_ids_may_be_posted_again():
    m = Market()
    m.offer("O1")
    m.load("L1")
    assert types(m.load("L1")) == ["load.rested"]
    assert types(m.offer("O1")) == ["deal.made"]


def test_one_batch_equals_one_command_at_a_time():
    cmds = [
        envelope("a", "offer.post", 10, offer_data("O1", consolidate=True)),
        envelope("b", "load.post", 20, _load("L1", weight_kg=2000)),
        envelope("c", "load.post", 30, _load("L2", pickup_to=35)),
        envelope("d", "clock.tick", 40, {}),
    ]
    m1 = Market()
    m2 = Market()
    assert m1.engine.process(cmds) == [e for c in cmds for e in m2.engine.process([c])]
