"""The carriers' feed core: the subscription filter, the cursor, what each carrier sees
of each market event, and the ring that resumes serve from."""

import orjson
import pytest

from services.common.envelope import make
from services.gateway import feed

LANE = "420100>420600>van-9.6"
OTHER = "420500>110100>flatbed-13"
LOAD_DATA = {
    "load_id": "L1", "shipper_id": "S1",
    "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
    "weight_kg": 8000, "volume_dm3": 20000, "cargo_category": "general",
    "pickup_from": 1, "pickup_to": 2, "mode": "auction", "declared_value_fen": 9,
    "auction": {"closes_at": 2, "reserve_fen": 500, "instant_fen": 100, "sealed": False},
}  # fmt: skip


def env(type_: str, data: dict, key: str = LANE) -> dict:
    return make(type_, data, key, "matching", 1_900_000_000_000, cause="c1")


def body(entry_bytes: bytes | None) -> dict | None:
    return None if entry_bytes is None else orjson.loads(b"{" + entry_bytes + b"}")


def test_empty_subscription_follows_every_lane():
    assert feed.Subscription().matches(LANE)
    assert not feed.Subscription().matches(None)


def test_filter_is_and_across_lists_or_within_one():
    sub = feed.parse_subscription(
        {
            "lanes": [
                LANE,
                {"origin": "420500", "destination": "110100", "vehicle_class": "flatbed-13"},
            ]
        }  # fmt: skip
    )
    assert sub.matches(LANE) and sub.matches(OTHER)
    assert not sub.matches("420100>420600>van-6.8")
    by_region = feed.parse_subscription({"regions": ["420600"], "vehicle_classes": ["van-9.6"]})
    assert by_region.matches(LANE)  # destination matches
    assert not by_region.matches("420600>420100>van-6.8")  # class does not
    assert not by_region.matches(OTHER)
    assert feed.parse_subscription({"regions": ["420500"]}).matches(OTHER)  # origin


@pytest.mark.parametrize(
    "frame",
    [{"lanes": "420100"}, {"lanes": ["nope"]}, {"regions": [1]},
     {"vehicle_classes": ["x"] * (feed.LIST_MAX + 1)}, {"lanes": [{"origin": "1"}]}],
)  # fmt: skip
def test_bad_subscriptions_are_invalid(frame):
    with pytest.raises(feed.FeedError) as err:
        feed.parse_subscription(frame)
    assert err.value.reason == "invalid"


def test_cursor_round_trips_and_refuses_what_it_did_not_make():
    offsets = [0, 17, 123456789, 5]
    cursor = feed.encode_cursor(offsets)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert feed.decode_cursor(cursor) == offsets
    for bad in ("", "!!", feed.encode_cursor([]), "eyJhIjoxfQ", 12, None,
                feed.encode_cursor([-1]), "W3RydWVd"):  # fmt: skip
        with pytest.raises(feed.FeedError):
            feed.decode_cursor(bad)


def test_resting_and_opened_loads_are_public_with_their_public_fields():
    loads = {"L1": feed.public_load(LOAD_DATA)}
    e = feed.make_entry(3, 10, env("auction.opened", {"load_id": "L1", "closes_at": 2,
                                                      "sealed": False}), loads, {})  # fmt: skip
    got = body(e.public)
    assert got["event"]["type"] == "auction.opened" and e.owner_id is None
    assert got["load"]["lane"] == LOAD_DATA["lane"] and got["load"]["weight_kg"] == 8000
    # Not the shipper, the declared value or the reserve.
    assert "shipper_id" not in got["load"] and "declared_value_fen" not in got["load"]
    assert got["load"]["auction"] == {"closes_at": 2, "instant_fen": 100, "sealed": False}
    unknown = feed.make_entry(3, 11, env("load.rested", {"load_id": "L9"}), loads, {})
    assert body(unknown.public) == {"event": body(unknown.public)["event"]}  # no load fields


def test_open_auction_bid_is_public_best_price_private_bidder():
    data = {"bid_id": "B1", "load_id": "L1", "carrier_id": "C1", "price_fen": 90, "best_fen": 90}
    e = feed.make_entry(0, 1, env("bid.accepted", data), {}, {})
    assert body(e.public)["event"]["data"] == {"load_id": "L1", "best_fen": 90}
    assert body(e.body_for("C1", feed.Subscription()))["event"]["data"] == data
    assert body(e.body_for("C2", feed.Subscription()))["event"]["data"]["best_fen"] == 90
    assert e.body_for("C2", feed.parse_subscription({"lanes": [OTHER]})) is None
    assert e.body_for("C1", feed.parse_subscription({"lanes": [OTHER]})) is not None


def test_sealed_auction_bid_is_seen_by_its_bidder_only():
    data = {"bid_id": "B1", "load_id": "L1", "carrier_id": "C1", "price_fen": 90, "best_fen": None}
    e = feed.make_entry(0, 1, env("bid.accepted", data), {}, {})
    assert e.public is None
    assert e.body_for("C2", feed.Subscription()) is None
    assert body(e.body_for("C1", None))["event"]["data"]["best_fen"] is None


def test_deal_is_its_carriers_alone():
    data = {"deal_id": "deal:L1", "load_id": "L1", "offer_id": None, "bid_id": "B1",
            "shipper_id": "S1", "carrier_id": "C1", "price_fen": 90, "lane": LOAD_DATA["lane"]}  # fmt: skip
    e = feed.make_entry(0, 1, env("deal.made", data), {}, {})
    assert e.body_for("C1", None) is not None
    assert e.body_for("C2", feed.Subscription()) is None


def test_auction_close_hides_the_winner_and_a_sealed_price():
    loads = {"L1": feed.public_load(LOAD_DATA)}
    sealed = {"L2": feed.public_load({**LOAD_DATA, "auction": {**LOAD_DATA["auction"],
                                                               "sealed": True}})}  # fmt: skip
    closed = {"load_id": "L1", "bid_id": "B1", "price_fen": 90}
    e = feed.make_entry(0, 1, env("auction.closed", closed), loads, {})
    assert body(e.public)["event"]["data"] == {"load_id": "L1", "bid_id": None, "price_fen": 90}
    e2 = feed.make_entry(0, 2, env("auction.closed", {**closed, "load_id": "L2"}), sealed, {})
    assert body(e2.public)["event"]["data"]["price_fen"] is None


def test_rejections_and_cancels_reach_the_owner_of_the_id():
    owners = {"B1": "C1", "O1": "C2"}
    rejected = feed.make_entry(0, 1, env("order.rejected", {"ref_id": "B1",
                                                            "reason": "not_improving"}), {}, owners)  # fmt: skip
    assert rejected.owner_id == "C1" and rejected.public is None
    assert rejected.body_for("C2", feed.Subscription()) is None
    cancelled = feed.make_entry(0, 2, env("order.cancelled", {"ref_id": "O1"}), {}, owners)
    assert cancelled.owner_id == "C2"
    rested = feed.make_entry(0, 3, env("offer.rested", {"offer_id": "O1", "remaining_kg": 1,
                                                        "remaining_dm3": 1}), {}, owners)  # fmt: skip
    assert rested.owner_id == "C2" and rested.private is not None
    # A load leaving the book is public; a stranger's or unknown id is nobody's.
    gone = feed.make_entry(0, 4, env("order.expired", {"ref_id": "L1"}),
                           {"L1": feed.public_load(LOAD_DATA)}, owners)  # fmt: skip
    assert gone.public is not None and gone.owner_id is None
    nobody = feed.make_entry(0, 5, env("order.rejected", {"ref_id": "X", "reason": "invalid"}),
                             {}, owners)  # fmt: skip
    assert nobody.public is None and nobody.private is None


def test_frame_carries_the_cursor_and_the_body():
    e = feed.make_entry(0, 1, env("load.rested", {"load_id": "L1"}), {}, {})
    doc = orjson.loads(feed.frame("abc", e.public))
    assert doc["type"] == "event" and doc["cursor"] == "abc"
    assert doc["event"]["data"] == {"load_id": "L1"}


def _entry(p: int, offset: int) -> feed.Entry:
    return feed.Entry(p, offset, LANE, b'"event":{}', None, None)


def test_ring_keeps_the_last_entries_and_raises_its_floor():
    ring = feed.Ring([5, 0], per_partition=3)
    assert ring.covers([5, 0]) and not ring.covers([4, 0])
    for off in (5, 6, 8, 10):  # 7 and 9: transaction markers
        ring.append(_entry(0, off))
    assert len(ring) == 3 and ring.floor == [6, 0]
    assert not ring.covers([5, 0]) and ring.covers([6, 0])
    assert [e.offset for e in ring.since(0, 7, 10)] == [8, 10]
    assert [e.offset for e in ring.since(0, 0, 2)] == [6, 8]
    assert ring.since(0, 11, 10) == [] and ring.since(1, 0, 10) == []
