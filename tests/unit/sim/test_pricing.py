"""Going rates from distance: what the simulated participants price around."""

from __future__ import annotations

import random

import pytest

from services.sim.pricing import MIN_TRIP_KM, PRICE_FEN_MIN, fen_text, noisy_fen


def test_road_distance_of_wuhan_to_xiangyang_is_about_three_hundred_km(reference):
    # Great circle about 270 km; the road is about a quarter longer.
    assert 320 <= reference.road_km("420100", "420600") <= 360
    assert reference.road_km("420100", "420600") == reference.road_km("420600", "420100")


def test_a_trip_inside_one_city_still_costs_the_minimum_distance(reference):
    assert reference.road_km("420100", "420100") == MIN_TRIP_KM


def test_rate_grows_with_distance_and_payload_and_is_integer_fen(reference):
    near = reference.rate_fen("van-9.6", 100)
    far = reference.rate_fen("van-9.6", 1000)
    small = reference.rate_fen("van-4.2", 1000)
    assert isinstance(near, int) and near < far and small < far
    # A 9.6 m van: 240 yuan plus 6 yuan a km.
    assert reference.rate_fen("van-9.6", 100) == 24_000 + 600 * 100


def test_a_reefer_costs_more_than_a_van_of_the_same_payload(reference):
    van = dict(reference.classes["van-9.6"])
    reefer = {**van, "body": "refrigerated"}
    from services.sim.pricing import rate_fen

    assert rate_fen(reefer, 500) > rate_fen(van, 500)


def test_noise_is_reproducible_whole_yuan_and_never_below_the_minimum():
    a = [noisy_fen(random.Random(3), 123_456, 1.1, 0.1) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0] % 100 == 0
    draws = [noisy_fen(random.Random(s), 123_456, 1.0, 0.08) for s in range(500)]
    assert 0.85 * 123_456 < sum(draws) / len(draws) < 1.15 * 123_456
    assert noisy_fen(random.Random(1), 10, 1.0, 0.5) == PRICE_FEN_MIN


@pytest.mark.parametrize(
    ("fen", "text"),
    [(0, "0.00"), (5, "0.05"), (12_345_678, "123,456.78"), (-150, "-1.50")],
)
def test_fen_is_shown_in_yuan_without_floats(fen, text):
    assert fen_text(fen) == text
