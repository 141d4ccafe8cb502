"""Participants and lanes from a seed: the same seed, the same market."""

from __future__ import annotations

import random

import pytest

from services.sim.orders import (
    OFFER_WINDOW_MS,
    AuctionTiming,
    ask_fen,
    floor_fen,
    load_body,
    offer_body,
    spot_ask_fen,
)
from services.sim.population import LANES_MAX, PARTICIPANTS_MAX, populate

NOW_MS = 1_772_409_600_000


def test_same_seed_same_population_other_seed_another(reference):
    assert populate(reference, 7, 3, 4) == populate(reference, 7, 3, 4)
    assert populate(reference, 7, 3, 4).lanes != populate(reference, 8, 3, 4).lanes


def test_lanes_leave_hubei_for_hubei_or_a_hub_and_are_distinct(reference):
    lanes = populate(reference, 1, 10, 12).lanes
    assert len(lanes) == min(LANES_MAX, 22) and len({lane.key for lane in lanes}) == len(lanes)
    for lane in lanes:
        assert reference.regions[lane.origin]["province"] == "Hubei"
        assert lane.origin != lane.destination
        assert lane.vehicle_class in reference.classes
        assert lane.rate_fen == reference.rate_fen(lane.vehicle_class, lane.road_km) > 0
    assert any(reference.regions[lane.destination]["province"] != "Hubei" for lane in lanes)


@pytest.mark.parametrize(("shippers", "carriers"), [(1, 1), (3, 3), (2, 7), (9, 2)])
def test_every_lane_has_a_shipper_and_two_carriers_when_there_are_two(
    reference, shippers, carriers
):
    population = populate(reference, 5, shippers, carriers)
    for lane in population.lanes:
        assert any(lane in s.lanes for s in population.shippers)
        assert sum(lane in c.lanes for c in population.carriers) >= min(2, carriers)


def test_a_thin_shipper_deposits_and_tops_up_for_a_few_loads_only(reference):
    population = populate(reference, 2, 3, 3)
    *rich, thin = population.shippers
    dearest = max(lane.rate_fen for lane in thin.lanes)
    assert thin.deposit_fen < 10 * dearest and thin.top_up_fen < 5 * dearest
    for shipper in rich:
        dearest = max(lane.rate_fen for lane in shipper.lanes)
        assert shipper.deposit_fen >= 40 * dearest and shipper.top_up_fen >= 40 * dearest
    # Two shippers: nobody is thin.
    assert all(s.deposit_fen >= 40 * max(lane.rate_fen for lane in s.lanes)
               for s in populate(reference, 2, 2, 3).shippers)  # fmt: skip


def test_carriers_cost_is_under_their_ask_and_strategies_are_the_sdks(reference):
    for carrier in populate(reference, 3, 2, 9).carriers:
        assert carrier.floor_permille < carrier.ask_permille
        assert carrier.strategy in ("undercut", "fixed") and carrier.trucks >= 1
        for lane in carrier.lanes:
            rng = random.Random(1)
            assert floor_fen(carrier, lane) <= ask_fen(rng, carrier, lane)


@pytest.mark.parametrize("n", [0, PARTICIPANTS_MAX + 1])
def test_population_size_is_bounded(reference, n):
    with pytest.raises(ValueError):
        populate(reference, 1, n, 1)


def test_loads_fit_their_truck_and_keep_the_engines_rules(reference):
    population = populate(reference, 4, 2, 2)
    plan = population.shippers[0]
    rng = random.Random(9)
    modes = set()
    for _ in range(300):
        lane = rng.choice(plan.lanes)
        body = load_body(rng, plan, lane, NOW_MS, AuctionTiming(4_000, 10_000))
        modes.add(body["mode"])
        assert 0 < body["weight_kg"] <= lane.capacity_kg
        assert 0 < body["volume_dm3"] <= lane.capacity_dm3
        assert NOW_MS < body["pickup_from"] < body["pickup_to"] <= body["deliver_by"]
        if body["mode"] == "market":
            assert body["limit_fen"] > 0
        else:
            auction = body["auction"]
            assert NOW_MS + 4_000 <= auction["closes_at"] <= NOW_MS + 10_000
            assert auction["closes_at"] <= body["pickup_to"]
            assert auction["reserve_fen"] > 0
            assert (
                auction["instant_fen"] is None or auction["instant_fen"] <= auction["reserve_fen"]
            )
    assert modes == {"market", "auction"}


def test_an_offer_is_one_truck_whose_window_covers_a_new_loads_pickup(reference):
    plan = populate(reference, 4, 2, 2).shippers[0]
    lane = plan.lanes[0]
    offer = offer_body(lane, NOW_MS, 123_400)
    load = load_body(random.Random(1), plan, lane, NOW_MS)
    assert offer["available_to"] == NOW_MS + OFFER_WINDOW_MS
    assert (
        offer["available_from"] <= load["pickup_to"]
        and load["pickup_from"] <= offer["available_to"]
    )
    assert (offer["capacity_kg"], offer["capacity_dm3"]) == (lane.capacity_kg, lane.capacity_dm3)


def test_a_resting_load_gets_an_offer_at_or_under_its_limit_only_above_cost(reference):
    carrier = populate(reference, 4, 2, 2).carriers[0]
    lane = carrier.lanes[0]
    floor = floor_fen(carrier, lane)
    assert spot_ask_fen(random.Random(1), carrier, lane, floor - 1) is None
    for limit in (floor, lane.rate_fen, 2 * lane.rate_fen):
        ask = spot_ask_fen(random.Random(1), carrier, lane, limit)
        assert ask is not None and floor <= ask <= limit
