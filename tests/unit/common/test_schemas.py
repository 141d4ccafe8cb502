import copy

import pytest

from services.common import reasons, schemas
from services.common.envelope import make
from services.common.schemas import ValidationError, validate, validate_envelope

from .samples import AUCTION_LOAD, DATA, LANE_KEY

TYPES = schemas.known_types()


def env(type_: str, data_: dict, **fields) -> dict:
    e = make(type_, copy.deepcopy(data_), LANE_KEY, "test", 1_767_225_600_000, id="e1")
    e.update(fields)
    return e


def test_every_type_has_a_sample_and_every_sample_a_schema():
    assert set(DATA) == set(TYPES)


def test_every_design_type_has_a_schema():
    design = {
        "load.post",
        "offer.post",
        "bid.place",
        "load.cancel",
        "offer.cancel",
        "bid.withdraw",
        "clock.tick",
        "deal.made",
        "load.rested",
        "offer.rested",
        "auction.opened",
        "auction.closed",
        "bid.accepted",
        "order.expired",
        "order.cancelled",
        "order.rejected",
        "load.rejected",
    }
    assert design <= set(TYPES)


@pytest.mark.parametrize("type_", TYPES)
def test_sample_of_each_type_validates(type_):
    validate(env(type_, DATA[type_]))


def test_auction_load_validates():
    validate(env("load.post", AUCTION_LOAD))


@pytest.mark.parametrize("type_", [t for t in TYPES if DATA[t]])
def test_each_type_refuses_data_without_a_required_field(type_):
    required = schemas._load(schemas.schema_path(type_))["required"]
    for name in required:
        data = {k: v for k, v in DATA[type_].items() if k != name}
        with pytest.raises(ValidationError, match=name):
            validate(env(type_, data))


@pytest.mark.parametrize("type_", TYPES)
def test_each_type_refuses_unknown_fields(type_):
    with pytest.raises(ValidationError, match="must not contain"):
        validate(env(type_, dict(DATA[type_], surprise=1)))


@pytest.mark.parametrize(
    ("type_", "field", "value"),
    [
        ("load.post", "limit_fen", 0),
        ("load.post", "limit_fen", 350_000.0),  # money is never a float, even a whole one
        ("load.post", "weight_kg", True),
        ("load.post", "weight_kg", -1),
        ("load.post", "mode", "barter"),
        (
            "load.post",
            "lane",
            {"origin": "4201", "destination": "420600", "vehicle_class": "van-9.6"},
        ),
        (
            "load.post",
            "lane",
            {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.7"},
        ),
        ("offer.post", "consolidate", "yes"),
        ("offer.post", "ask_fen", "300000"),
        ("bid.place", "price_fen", 12.5),
        ("deal.made", "offer_id", 7),
        ("bid.accepted", "best_fen", 0),
        ("order.rejected", "reason", "insufficient_funds"),  # a gate reason, not the engine's
        ("load.rejected", "reason", "not_improving"),
        ("offer.rested", "remaining_kg", 0),
    ],
)
def test_bad_field_values_are_refused_naming_the_field(type_, field, value):
    with pytest.raises(ValidationError, match=f"{type_} v1: data.{field}"):
        validate(env(type_, dict(DATA[type_], **{field: value})))


def test_market_load_needs_a_limit_and_no_auction():
    data = {k: v for k, v in DATA["load.post"].items() if k != "limit_fen"}
    with pytest.raises(ValidationError, match="limit_fen"):
        validate(env("load.post", data))
    with pytest.raises(ValidationError):
        validate(env("load.post", dict(DATA["load.post"], auction=AUCTION_LOAD["auction"])))


def test_auction_load_needs_its_auction():
    data = {k: v for k, v in AUCTION_LOAD.items() if k != "auction"}
    with pytest.raises(ValidationError, match="auction"):
        validate(env("load.post", data))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", ""),
        ("id", 5),
        ("type", "LoadPost"),
        ("v", 0),
        ("v", 1.0),
        ("ts", -1),
        ("ts", "1"),
        ("key", 5),
        ("source", ""),
        ("cause", 1),
        ("data", []),
    ],
)
def test_bad_envelope_fields_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=f"envelope.{field}"):
        validate(env("load.rested", DATA["load.rested"], **{field: value}))


def test_envelope_without_a_field_or_with_an_extra_one_is_refused():
    e = env("load.rested", DATA["load.rested"])
    del e["cause"]
    with pytest.raises(ValidationError, match="cause"):
        validate(e)
    with pytest.raises(ValidationError):
        validate(env("load.rested", DATA["load.rested"], extra=1))


@pytest.mark.parametrize("value", [None, [], "text", 5])
def test_non_objects_are_refused(value):
    with pytest.raises(ValidationError):
        validate(value)


def test_unknown_type_is_refused_by_validate_but_not_by_validate_envelope():
    e = env("load.teleport", {"anything": 1})
    with pytest.raises(ValidationError, match="unknown type"):
        validate(e)
    validate_envelope(e)


def test_validate_envelope_ignores_data():
    validate_envelope(env("load.post", {"load_id": 5}))


def test_engine_outputs_ids_are_valid_envelope_ids():
    validate(
        env(
            "load.rested",
            DATA["load.rested"],
            id="018bcfe5-6800-7241-9a1f-7d1e4d7eec8d:0",
            cause="018bcfe5-6800-7241-9a1f-7d1e4d7eec8d",
        )
    )


def _enum(type_: str) -> list[str]:
    return schemas._load(schemas.schema_path(type_))["properties"]["reason"]["enum"]


def test_rejection_reasons_are_the_words_of_reasons_py():
    assert _enum("order.rejected") == list(reasons.ENGINE_REJECT_PRECEDENCE)
    assert _enum("load.rejected") == list(reasons.GATE_REJECTS)
