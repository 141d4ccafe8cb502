"""Every reject reason, and their precedence: the first that applies is reported."""

from __future__ import annotations

import pytest

from services.common import reasons
from tests.unit.matching.builders import (
    KEY,
    Market,
    auction_data,
    bid_data,
    envelope,
    load_data,
    offer_data,
    reason,
    resting,
)

pytestmark = pytest.mark.usefixtures("engine_cls")


def _without(d, field):
    d = dict(d)
    del d[field]
    return d


def _auction_with(**kw):
    d = auction_data("A1")
    d["auction"] = {**d["auction"], **kw}
    return d


INVALID_COMMANDS = {
    "load missing weight": ("load.post", _without(load_data("L1"), "weight_kg"), "L1"),
    "load weight is a float": ("load.post", load_data("L1", weight_kg=1000.0), "L1"),
    "load weight is a bool": ("load.post", load_data("L1", weight_kg=True), "L1"),
    "load limit is a string": ("load.post", load_data("L1", limit_fen="1000"), "L1"),
    "load limit zero": ("load.post", load_data("L1", limit_fen=0), "L1"),
    "load volume negative": ("load.post", load_data("L1", volume_dm3=-5), "L1"),
    "load limit beyond int64": ("load.post", load_data("L1", limit_fen=2**63), "L1"),
    "load market without limit": ("load.post", _without(load_data("L1"), "limit_fen"), "L1"),
    "load pickup window inverted": (
        "load.post",
        load_data("L1", pickup_from=900, pickup_to=800),
        "L1",
    ),
    "load pickup time negative": ("load.post", load_data("L1", pickup_from=-1), "L1"),
    "load unknown mode": ("load.post", load_data("L1", mode="dutch"), "L1"),
    "load lane missing part": (
        "load.post",
        load_data("L1", lane={"origin": "420100", "destination": "420600"}),
        "L1",
    ),
    "load lane part with separator": (
        "load.post",
        load_data(
            "L1", lane={"origin": "4>2", "destination": "420600", "vehicle_class": "van-9.6"}
        ),
        "L1",
    ),
    "load lane not an object": ("load.post", load_data("L1", lane="420100>420600>van"), "L1"),
    "load id not a string": ("load.post", load_data(17), None),
    "load id empty": ("load.post", load_data(""), ""),
    "load shipper missing": ("load.post", _without(load_data("L1"), "shipper_id"), "L1"),
    "auction closes after pickup_to": ("load.post", _auction_with(closes_at=20_000), "A1"),
    "auction instant above reserve": (
        "load.post",
        _auction_with(reserve_fen=900, instant_fen=901),
        "A1",
    ),
    "auction sealed not a bool": ("load.post", _auction_with(sealed=1), "A1"),
    "auction reserve zero": ("load.post", _auction_with(reserve_fen=0), "A1"),
    "auction object missing": ("load.post", _without(auction_data("A1"), "auction"), "A1"),
    "offer capacity zero": ("offer.post", offer_data("O1", capacity_kg=0), "O1"),
    "offer ask float": ("offer.post", offer_data("O1", ask_fen=800.5), "O1"),
    "offer window inverted": (
        "offer.post",
        offer_data("O1", available_from=5, available_to=4),
        "O1",
    ),
    "offer consolidate not a bool": ("offer.post", offer_data("O1", consolidate=0), "O1"),
    "offer missing carrier": ("offer.post", _without(offer_data("O1"), "carrier_id"), "O1"),
    "bid price zero": ("bid.place", bid_data("B1", price_fen=0), "B1"),
    "bid price bool": ("bid.place", bid_data("B1", price_fen=True), "B1"),
    "bid without load": ("bid.place", _without(bid_data("B1"), "load_id"), "B1"),
    "bid without id": ("bid.place", _without(bid_data("B1"), "bid_id"), None),
    "load cancel without shipper": ("load.cancel", {"load_id": "L1"}, "L1"),
    "offer cancel carrier not a string": (
        "offer.cancel",
        {"offer_id": "O1", "carrier_id": 3},
        "O1",
    ),
    "bid withdraw without carrier": ("bid.withdraw", {"bid_id": "B1"}, "B1"),
    "data not an object": ("load.post", ["L1"], None),
    "data missing": ("offer.post", None, None),
    "unknown type": ("load.repost", load_data("L1"), None),
}


@pytest.mark.parametrize("name", sorted(INVALID_COMMANDS))
def test_malformed_command_is_rejected_invalid(name):
    typ, data, ref = INVALID_COMMANDS[name]
    m = Market()
    [ev] = m.send(typ, data, ts=100)
    assert ev["type"] == "order.rejected"
    assert ev["data"] == {"ref_id": ref, "reason": reasons.INVALID}
    assert ev["key"] == KEY and ev["cause"] == "c1" and ev["id"] == "c1:0"


@pytest.mark.parametrize("ts", [None, "100", 100.0, True, -1, 2**63])
def test_command_without_a_valid_ts_is_invalid_and_leaves_the_clock(ts):
    m = Market()
    m.offer("O1", ts=100, available_to=200)
    [ev] = m.engine.process([envelope("x", "load.post", ts, load_data("L1"))])
    assert ev["data"] == {"ref_id": "L1", "reason": reasons.INVALID}
    assert ev["ts"] == 100 and m.engine.now == 100
    assert len(resting(m.engine)["offers"]) == 1  # no timer fired


def test_command_without_an_id_is_invalid():
    m = Market()
    cmd = envelope("x", "load.post", 100, load_data("L1"))
    del cmd["id"]
    [ev] = m.engine.process([cmd])
    assert ev["data"] == {"ref_id": "L1", "reason": reasons.INVALID}
    assert ev["id"] == ":0" and ev["cause"] is None


def test_command_that_is_not_an_object_is_invalid():
    [ev] = Market().engine.process(["load.post"])
    assert ev["type"] == "order.rejected" and ev["data"]["reason"] == reasons.INVALID


def test_rejection_carries_the_commands_own_key():
    m = Market()
    [ev] = m.send("load.post", load_data("L1", weight_kg=0), key="some>other>key")
    assert ev["key"] == "some>other>key"


def test_load_with_pickup_to_before_now_is_expired():
    m = Market()
    assert reason(m.load("L1", ts=1000, pickup_to=999)) == reasons.EXPIRED
    assert reason(m.auction("A1", ts=1000, closes_at=999, pickup_to=999)) == reasons.EXPIRED
    assert m.load("L2", ts=1000, pickup_to=1000)[0]["type"] == "load.rested"


def test_auction_closing_at_or_before_now_is_expired():
    m = Market()
    assert reason(m.auction("A1", ts=1000, closes_at=1000)) == reasons.EXPIRED
    assert m.auction("A2", ts=1000, closes_at=1001)[0]["type"] == "auction.opened"


def test_offer_with_available_to_before_now_is_expired():
    m = Market()
    assert reason(m.offer("O1", ts=1000, available_to=999)) == reasons.EXPIRED
    assert m.offer("O2", ts=1000, available_to=1000)[0]["type"] == "offer.rested"


def test_live_ids_are_duplicates_per_kind():
    m = Market()
    m.load("L1")
    m.offer("O1", ask_fen=5000)
    m.auction("A1")
    m.bid("B1", load_id="A1")
    assert reason(m.load("L1")) == reasons.DUPLICATE_ID
    assert reason(m.auction("A1")) == reasons.DUPLICATE_ID
    assert reason(m.load("A1")) == reasons.DUPLICATE_ID
    assert reason(m.offer("O1")) == reasons.DUPLICATE_ID
    assert reason(m.bid("B1", load_id="A1", price_fen=10)) == reasons.DUPLICATE_ID
    # Another kind may use the same id.
    assert m.offer("L1", ask_fen=5000)[0]["type"] == "offer.rested"


def test_cancel_of_no_live_order_is_unknown_order():
    m = Market()
    assert reason(m.cancel_load("L1")) == reasons.UNKNOWN_ORDER
    assert reason(m.cancel_offer("O1")) == reasons.UNKNOWN_ORDER
    assert reason(m.withdraw("B1")) == reasons.UNKNOWN_ORDER
    m.load("L1")
    m.cancel_load("L1")
    assert reason(m.cancel_load("L1")) == reasons.UNKNOWN_ORDER


def test_traded_load_is_unknown_to_a_cancel():
    m = Market()
    m.offer("O1")
    m.load("L1")
    assert reason(m.cancel_load("L1")) == reasons.UNKNOWN_ORDER
    assert reason(m.cancel_offer("O1")) == reasons.UNKNOWN_ORDER


def test_bid_on_no_live_load_is_unknown_order():
    m = Market()
    assert reason(m.bid("B1", load_id="A9")) == reasons.UNKNOWN_ORDER


def test_cancel_by_someone_else_is_not_owner():
    m = Market()
    m.load("L1", shipper_id="S1")
    m.offer("O1", carrier_id="K1", ask_fen=5000)
    m.auction("A1")
    m.bid("B1", carrier_id="K1")
    assert reason(m.cancel_load("L1", shipper_id="S2")) == reasons.NOT_OWNER
    assert reason(m.cancel_load("A1", shipper_id="S2")) == reasons.NOT_OWNER
    assert reason(m.cancel_offer("O1", carrier_id="K2")) == reasons.NOT_OWNER
    assert reason(m.withdraw("B1", carrier_id="K2")) == reasons.NOT_OWNER


def test_bid_on_a_market_load_is_not_auction():
    m = Market()
    m.load("L1")
    assert reason(m.bid("B1", load_id="L1")) == reasons.NOT_AUCTION


def test_bid_above_reserve_is_refused():
    m = Market()
    m.auction("A1", reserve_fen=1000)
    assert reason(m.bid("B1", price_fen=1001)) == reasons.ABOVE_RESERVE
    assert m.bid("B2", price_fen=1000)[0]["type"] == "bid.accepted"


def test_open_auction_takes_only_a_bid_strictly_below_the_best():
    m = Market()
    m.auction("A1")
    m.bid("B1", price_fen=900)
    assert reason(m.bid("B2", price_fen=900)) == reasons.NOT_IMPROVING
    assert reason(m.bid("B3", price_fen=901)) == reasons.NOT_IMPROVING
    assert m.bid("B4", price_fen=899)[0]["type"] == "bid.accepted"


# -- precedence ----------------------------------------------------------------------


def test_invalid_comes_before_expired():
    m = Market()
    assert reason(m.load("L1", ts=1000, pickup_to=10, limit_fen=0)) == reasons.INVALID


def test_expired_comes_before_duplicate_id():
    m = Market()
    m.load("L1", ts=100, pickup_to=5000)
    assert reason(m.load("L1", ts=200, pickup_to=150)) == reasons.EXPIRED


def test_duplicate_id_comes_before_unknown_order():
    m = Market()
    m.auction("A1")
    m.bid("B1", load_id="A1")
    assert reason(m.bid("B1", load_id="nowhere")) == reasons.DUPLICATE_ID


def test_unknown_order_comes_before_not_auction():
    m = Market()
    assert reason(m.bid("B1", load_id="L1")) == reasons.UNKNOWN_ORDER


def test_not_auction_comes_before_above_reserve():
    m = Market()
    m.load("L1")
    assert reason(m.bid("B1", load_id="L1", price_fen=10**9)) == reasons.NOT_AUCTION


def test_above_reserve_comes_before_not_improving():
    m = Market()
    m.auction("A1", reserve_fen=1000)
    m.bid("B1", price_fen=500)
    assert reason(m.bid("B2", price_fen=1500)) == reasons.ABOVE_RESERVE


def test_unknown_order_comes_before_not_owner():
    m = Market()
    m.load("L1", shipper_id="S1")
    assert reason(m.cancel_load("L2", shipper_id="S2")) == reasons.UNKNOWN_ORDER


def test_reason_words_come_from_the_shared_module():
    assert reasons.ENGINE_REJECT_PRECEDENCE == (
        "invalid",
        "expired",
        "duplicate_id",
        "unknown_order",
        "not_owner",
        "not_auction",
        "above_reserve",
        "not_improving",
    )
