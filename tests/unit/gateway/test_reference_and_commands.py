import pytest

from services.common import reasons, schemas
from services.gateway import commands, problems
from services.gateway.bodies import _depth
from services.gateway.models import AuctionLoad, MarketLoad, OfferRequest
from services.gateway.reference import tables

HUBEI = {"420100", "420200", "420300", "420500", "420600", "420700", "420800", "420900",
         "421000", "421100", "421200", "421300", "422800", "429004", "429005", "429006",
         "429021"}  # fmt: skip
NOW = 1_900_000_000_000
H = 3_600_000
LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}


def test_regions_are_the_17_hubei_divisions_plus_national_hubs():
    t = tables()
    hubei = {c for c, r in t.regions.items() if r["province"] == "Hubei"}
    assert hubei == HUBEI
    assert {"110100", "310100", "440100", "500100", "510100"} <= set(t.regions)
    for r in t.regions.values():
        assert 18 < r["lat"] < 54 and 73 < r["lon"] < 136


def test_distances_are_great_circle_km():
    t = tables()
    assert 250 < t.distance_km("420100", "420600") < 320  # Wuhan-Xiangyang
    assert 1000 < t.distance_km("420100", "110100") < 1100  # Wuhan-Beijing
    assert t.distance_km("420100", "420100") == 0


def test_vehicle_classes_are_every_body_and_length_with_capacity():
    classes = tables().classes
    assert len(classes) == 35
    for body in ("van", "high-rail", "flatbed", "refrigerated", "container", "tanker", "hazmat"):
        sizes = [classes[f"{body}-{length}"] for length in ("4.2", "6.8", "9.6", "13", "17.5")]
        kgs = [s["capacity_kg"] for s in sizes]
        assert kgs == sorted(kgs) and kgs[0] > 0


def market(**kw) -> MarketLoad:
    doc = dict(mode="market", lane=LANE, weight_kg=1000, volume_dm3=2000,
               cargo_category="food", pickup_from=NOW + H, pickup_to=NOW + 2 * H,
               limit_fen=100_000) | kw  # fmt: skip
    return MarketLoad.model_validate(doc, strict=True)


def test_load_post_is_the_engine_command_and_passes_its_schema():
    cmd = commands.load_post(market(), "L1", "S1", NOW)
    schemas.validate(cmd)
    assert cmd["type"] == "load.post" and cmd["ts"] == NOW and cmd["source"] == "gateway"
    assert cmd["key"] == "420100>420600>van-9.6"
    auction = AuctionLoad.model_validate(
        dict(mode="auction", lane=LANE, weight_kg=1, volume_dm3=1, cargo_category="food",
             pickup_from=NOW, pickup_to=NOW + H, auction={"closes_at": NOW + 1}),
        strict=True,
    )  # fmt: skip
    cmd = commands.load_post(auction, "L2", "S1", NOW)
    schemas.validate(cmd)
    assert cmd["data"]["auction"] == {
        "closes_at": NOW + 1, "reserve_fen": None, "instant_fen": None, "sealed": False,
    }  # fmt: skip


def test_offer_and_cancels_pass_their_schemas():
    req = OfferRequest.model_validate(
        dict(lane=LANE, capacity_kg=1, capacity_dm3=1, available_from=NOW,
             available_to=NOW + H, ask_fen=1),
        strict=True,
    )  # fmt: skip
    for cmd in (
        commands.offer_post(req, "O1", "C1", NOW),
        commands.offer_cancel("O1", "C1", "k", NOW),
        commands.load_cancel("L1", "S1", "k", NOW),
    ):
        schemas.validate(cmd)


@pytest.mark.parametrize(
    ("load", "reason"),
    [
        (market(weight_kg=18_001), problems.OVER_CAPACITY),
        (market(lane=LANE | {"origin": "420400"}), problems.UNKNOWN_REGION),  # no such prefecture
        (market(pickup_from=NOW + 3 * H), reasons.INVALID),
        (market(deliver_by=NOW), reasons.INVALID),
        (market(pickup_from=NOW - 3 * H, pickup_to=NOW - H), reasons.EXPIRED),
    ],
)
def test_check_load_refuses_with_the_words_of_the_house(load, reason):
    with pytest.raises(problems.ProblemError) as e:
        commands.check_load(load, tables(), NOW)
    assert e.value.reason == reason and e.value.status == 422


def test_depth_is_measured_without_recursion():
    assert _depth({"a": {"b": [1]}}) == 3
    deep: list = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    assert _depth(deep) > 8
