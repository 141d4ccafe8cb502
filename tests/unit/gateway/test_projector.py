"""The read-model fold (services.gateway.projector) and the status rules
(services.gateway.lifecycle), without a database: which rows each event changes."""

from __future__ import annotations

import pytest

from services.common import schemas
from services.common.envelope import make
from services.gateway import lifecycle as lc
from services.gateway import projector as p

LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
KEY = "420100>420600>van-9.6"
TS = 1_767_225_600_000


def ev(type_: str, data: dict, *, cause: str | None = "cmd-1", key: str = KEY) -> dict:
    env = make(type_, data, key, "test", TS, cause=cause)
    schemas.validate(env)  # every event the tests fold is one the topics could carry
    return env


def deal_made(offer_id="o1", bid_id=None) -> dict:
    return ev(
        "deal.made",
        {
            "deal_id": "deal:L1", "load_id": "L1", "offer_id": offer_id, "bid_id": bid_id,
            "shipper_id": "S1", "carrier_id": "C1", "price_fen": 300_000, "lane": LANE,
        },
    )  # fmt: skip


# ---------------------------------------------------------------------------- statuses


def test_status_moves_only_forward():
    assert "requested" in lc.replaceable_by("open")
    assert "open" in lc.replaceable_by("dealt")
    assert "delivered" in lc.replaceable_by("settled")
    assert "disputed" in lc.replaceable_by("refunded")
    # deal.settled projected before shipment.delivered: delivered does not undo it.
    assert "settled" not in lc.replaceable_by("delivered")
    assert "disputed" not in lc.replaceable_by("delivered")
    for final in lc.FINAL:
        assert not set(lc.FINAL) & set(lc.replaceable_by(final)), "a final status is final"
    assert lc.FINAL == {"settled", "cancelled", "expired", "rejected", "refunded"}


def test_shipment_actions_fit_their_states():
    assert lc.ACTION_FROM[lc.PICKUP] == ("dealt",)
    assert lc.ACTION_FROM[lc.DELIVER] == ("picked_up",)
    assert set(lc.ACTION_FROM[lc.DISPUTE]) == {"dealt", "picked_up", "delivered"}
    assert lc.ACTION_FROM[lc.DECISION] == ("disputed",)
    for action, to in lc.ACTION_TO.items():
        if to is not None:
            assert all(s in lc.replaceable_by(to) for s in lc.ACTION_FROM[action])


# ---------------------------------------------------------------------------- market


@pytest.mark.parametrize("type_", ["load.rested", "auction.opened"])
def test_rested_or_opened_load_is_open(type_):
    data = {"load_id": "L1"}
    if type_ == "auction.opened":
        data |= {"closes_at": TS + 1000, "sealed": False}
    f = p.fold(ev(type_, data))
    assert f.changes == [p.LoadStatus("L1", "open"), p.Log(load_id="L1")]
    assert f.needs == (("load", "L1"),)


def test_deal_made_records_the_deal_and_deals_the_load():
    f = p.fold(deal_made())
    deal, status, log = f.changes
    assert deal == p.Deal("deal:L1", "L1", "S1", "C1", "o1", None, 300_000, TS)
    assert status == p.LoadStatus("L1", "dealt") and log == p.Log(load_id="L1")
    assert f.needs == (("load", "L1"),), "a deal never waits for its offer's row"


def test_bid_accepted_is_a_bid_of_the_load():
    f = p.fold(
        ev(
            "bid.accepted",
            {"bid_id": "B1", "load_id": "L1", "carrier_id": "C1", "price_fen": 5, "best_fen": 5},
        )
    )
    assert f.changes == [p.BidPlaced("B1", "L1", "C1", 5, TS), p.Log(load_id="L1")]


def test_auction_closed_without_a_bid_expires_the_load():
    f = p.fold(ev("auction.closed", {"load_id": "L1", "bid_id": None, "price_fen": None}))
    assert f.changes[0] == p.LoadStatus("L1", "expired")
    won = p.fold(ev("auction.closed", {"load_id": "L1", "bid_id": "B1", "price_fen": 5}))
    assert won.changes == [p.Log(load_id="L1")], "the deal.made before it dealt the load"


def test_cancel_and_expiry_name_a_load_offer_or_bid():
    f = p.fold(ev("order.cancelled", {"ref_id": "X"}))
    assert f.changes == [p.RefStatus("X", "cancelled", "cancelled", "withdrawn"), p.Log(ref_id="X")]
    assert f.needs == (("ref", "X"),)
    f = p.fold(ev("order.expired", {"ref_id": "X"}))
    assert f.changes[0] == p.RefStatus("X", "expired", "expired", None)


def test_offer_rested_opens_the_offer():
    f = p.fold(ev("offer.rested", {"offer_id": "o1", "remaining_kg": 6000, "remaining_dm3": 10}))
    assert f.changes == [p.OfferRested("o1", 6000, 10)] and f.needs == (("offer", "o1"),)


def test_rejection_names_the_command_by_its_cause():
    f = p.fold(ev("order.rejected", {"ref_id": "L1", "reason": "expired"}, cause="cmd-9"))
    assert f.changes == [p.CommandRejected("L1", "cmd-9", "expired"), p.Log(cause="cmd-9")]
    assert f.needs == (("ref", "L1"),)


def test_bid_rejections_do_not_wait_for_rows_that_never_come():
    f = p.fold(ev("order.rejected", {"ref_id": "B1", "reason": "not_improving"}))
    assert f.needs == ()


def test_duplicate_id_never_rejects_a_live_load():
    f = p.fold(ev("order.rejected", {"ref_id": "L1", "reason": "duplicate_id"}))
    assert f.changes == [p.Log(cause="cmd-1")]
    f = p.fold(ev("load.rejected", {"load_id": "L1", "reason": "duplicate_id"}))
    assert f.changes == [p.Log(load_id="L1")]


def test_rejection_without_ref_or_cause_changes_nothing():
    assert p.fold(ev("order.rejected", {"ref_id": None, "reason": "invalid"})).changes == []
    assert (
        p.fold(ev("order.rejected", {"ref_id": "L1", "reason": "invalid"}, cause=None)).changes
        == []
    )


# ---------------------------------------------------------------------------- settlement


def test_gate_rejection_rejects_the_load_with_its_reason():
    f = p.fold(
        ev("load.rejected", {"load_id": "L1", "shipper_id": "S1", "reason": "insufficient_funds"})
    )
    assert f.changes == [p.LoadStatus("L1", "rejected", "insufficient_funds"), p.Log(load_id="L1")]


def test_funding_is_shown_in_the_feed_only():
    f = p.fold(
        ev(
            "load.funded",
            {"load_id": "L1", "shipper_id": "S1", "hold_fen": 5, "transfer_id": "t"},
        )
    )
    assert f.changes == [p.Log(load_id="L1")]


def test_deal_settled_settles_and_records_the_money():
    data = {
        "deal_id": "deal:L1", "load_id": "L1", "shipper_id": "S1", "carrier_id": "C1",
        "price_fen": 300_000, "fee_fen": 6_000, "payout_fen": 294_000, "premium_fen": 0,
        "insurer_id": None, "refund_fen": 0, "how": "delivered",
    }  # fmt: skip
    facts, status, log = p.fold(ev("deal.settled", data)).changes
    assert status == p.LoadStatus("L1", "settled")
    cols = dict(facts.columns)
    assert cols["payout_fen"] == 294_000 and cols["how"] == "delivered"
    assert cols["settled_ms"] == TS
    assert set(cols) <= p.DEAL_COLUMNS


def test_escrow_refund_refunds_the_load():
    data = {"deal_id": "deal:L1", "load_id": "L1", "shipper_id": "S1", "amount_fen": 5}
    facts, status, _ = p.fold(ev("escrow.refunded", data)).changes
    assert status == p.LoadStatus("L1", "refunded")
    assert dict(facts.columns) == {"refunded_ms": TS, "refunded_fen": 5}


def test_participant_money_is_not_a_load_event():
    f = p.fold(
        ev(
            "funds.deposited",
            {"participant_id": "S1", "amount_fen": 5, "bank_ref": "b", "transfer_id": "t"},
            key="S1",
        )
    )
    assert f == p.Fold()


# ---------------------------------------------------------------------------- shipments


@pytest.mark.parametrize(
    ("type_", "extra", "status", "column"),
    [
        ("shipment.picked_up", {"carrier_id": "C1"}, "picked_up", "picked_up_ms"),
        (
            "shipment.delivered",
            {"carrier_id": "C1", "proof_ref": "POD-1"},
            "delivered",
            "delivered_ms",
        ),
        (
            "shipment.disputed",
            {"participant_id": "S1", "reason": "late"},
            "disputed",
            "disputed_ms",
        ),
    ],
)
def test_shipment_events_move_the_deal(type_, extra, status, column):
    env = ev(type_, {"deal_id": "deal:L1", "load_id": "L1", **extra}, key="deal:L1")
    facts, moved, log = p.fold(env).changes
    assert moved == p.LoadStatus("L1", status)
    assert dict(facts.columns)[column] == TS and set(dict(facts.columns)) <= p.DEAL_COLUMNS
    assert log == p.Log(load_id="L1")


def test_decision_leaves_the_status_to_settlement():
    data = {
        "deal_id": "deal:L1", "load_id": "L1", "operator_id": "OP",
        "resolution": "split", "carrier_fen": 100,
    }  # fmt: skip
    changes = p.fold(ev("dispute.decided", data, key="deal:L1")).changes
    assert not any(isinstance(c, p.LoadStatus) for c in changes)
    assert dict(changes[0].columns)["resolution"] == "split"


def test_unknown_types_with_a_load_are_logged():
    env = {"id": "e", "type": "policy.issued", "v": 1, "ts": TS, "key": "k", "source": "insurance",
           "cause": None, "data": {"load_id": "L1"}}  # fmt: skip
    assert p.fold(env) == p.Fold([p.Log(load_id="L1")], (("load", "L1"),))
