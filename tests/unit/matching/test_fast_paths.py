"""The engine's fast paths (event-id table, levels of one, id-keyed expiry
entries) must give exactly what the plain code gave. The byte-for-byte comparison with
the original engine on the benchmark workloads lives outside the suite (it needs the old
code); these pin the edge cases of each shortcut."""

from __future__ import annotations

from tests.unit.matching.builders import LANE, envelope, load_data, offer_data


def test_event_ids_past_the_suffix_table(engine_cls):
    # 300 offers expire before one tick: ids run :0 .. :299 without a gap or a change
    # of form where the precomputed suffixes end.
    engine = engine_cls()
    posts = [
        envelope(f"c{i}", "offer.post", 1, offer_data(f"O{i}", available_to=100))
        for i in range(300)
    ]
    engine.process(posts)
    out = engine.process([envelope("tick", "clock.tick", 101, {})])
    assert [e["id"] for e in out] == [f"tick:{i}" for i in range(300)]
    assert [e["data"]["ref_id"] for e in out] == [f"O{i}" for i in range(300)]


def test_lane_checks_after_a_valid_lane(engine_cls):
    engine = engine_cls()
    ok = engine.process([envelope("c1", "load.post", 1, load_data("L1"))])
    assert ok[0]["type"] == "load.rested"
    for bad in (
        {**LANE, "origin": "4201>00"},
        {**LANE, "origin": ""},
        {**LANE, "origin": 420100},
        {"origin": LANE["origin"], "destination": LANE["destination"]},
        [LANE["origin"], LANE["destination"], LANE["vehicle_class"]],
    ):
        out = engine.process([envelope("c2", "load.post", 2, load_data("L2", lane=bad))])
        assert out[0]["data"]["reason"] == "invalid", bad


def test_reused_id_does_not_inherit_the_old_expiry(engine_cls):
    # O1 trades away, a new O1 rests with a later deadline: the first O1's timer entry
    # must not expire the second one.
    engine = engine_cls()
    engine.process([envelope("c1", "offer.post", 1, offer_data("O1", available_to=100))])
    deal = engine.process([envelope("c2", "load.post", 2, load_data("L1", limit_fen=10**6))])
    assert deal[0]["type"] == "deal.made"
    engine.process([envelope("c3", "offer.post", 3, offer_data("O1", available_to=500))])
    assert engine.process([envelope("c4", "clock.tick", 200, {})]) == []
    out = engine.process([envelope("c5", "clock.tick", 501, {})])
    assert [(e["type"], e["data"]["ref_id"]) for e in out] == [("order.expired", "O1")]


def test_level_of_one_grows_and_shrinks(engine_cls):
    # Two offers at one ask, then a third at another; cancel the front of the shared
    # level and the lone one: matching still goes lowest ask, earliest first.
    engine = engine_cls()
    engine.process(
        [
            envelope("c1", "offer.post", 1, offer_data("O1", ask_fen=500)),
            envelope("c2", "offer.post", 2, offer_data("O2", ask_fen=500)),
            envelope("c3", "offer.post", 3, offer_data("O3", ask_fen=400)),
            envelope("c4", "offer.cancel", 4, {"offer_id": "O1", "carrier_id": "K1"}),
            envelope("c5", "offer.cancel", 5, {"offer_id": "O3", "carrier_id": "K1"}),
        ]
    )
    out = engine.process([envelope("c6", "load.post", 6, load_data("L1", limit_fen=600))])
    assert out[0]["type"] == "deal.made"
    assert out[0]["data"]["offer_id"] == "O2"
    assert out[0]["data"]["price_fen"] == 500
    assert out[0]["data"]["lane"] == LANE
