"""The settler's rules (services/settlement/settler.py), pure: each event's transfers, row
and settlement events, and the money they move in a pure Ledger."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import services.settlement as settlement
from services.common import schemas
from services.common.envelope import make
from services.settlement import holds as H
from services.settlement import ledger as L
from services.settlement import postings as P
from services.settlement import settler as S

FEES = P.FeeSchedule(200, 500)
LANE = {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"}
LANE_KEY = "420100>420600>van-9.6"
TS = 1_767_225_600_000


def held(load_id="L1", hold_fen=350_000, *, premium_fen=0, insurer_id=None, mode="market"):
    return H.LoadHold(load_id, "S1", f"post-{load_id}", LANE_KEY, mode,
                      L.transfer_id(f"post-{load_id}", "hold"), hold_fen, insurer_id,
                      premium_fen, H.HELD, updated_ms=TS - 1)  # fmt: skip


def event(type_, data, eid, *, cause=None, ts=TS, key=LANE_KEY):
    return make(type_, data, key, "matching", ts, cause=cause, id=eid)


def deal(load_id="L1", price_fen=300_000, eid="cmd-offer:0"):
    return event("deal.made", {
        "deal_id": f"deal:{load_id}", "load_id": load_id, "offer_id": "O1", "bid_id": None,
        "shipper_id": "S1", "carrier_id": "C1", "price_fen": price_fen, "lane": LANE,
    }, eid, cause=eid.split(":")[0])  # fmt: skip


def shipment(type_, load_id="L1", eid="ship-1", **extra):
    data = {"deal_id": f"deal:{load_id}", "load_id": load_id}
    if type_ in ("shipment.picked_up", "shipment.delivered"):
        data["carrier_id"] = "C1"
    if type_ == "shipment.delivered":
        data["proof_ref"] = "pod-1"
    if type_ == "shipment.disputed":
        data |= {"participant_id": "S1", "reason": "damaged"}
    if type_ == "dispute.decided":
        data |= {"operator_id": "OP1", "resolution": "release", "carrier_fen": None}
    data |= extra
    return make(type_, data, f"deal:{load_id}", "gateway", TS + 1000, id=eid)


def books(*accounts_extra: str) -> L.Ledger:
    """A pure ledger with S1 funded 1,000,000 and a hold for L1 of 350,000 placed."""
    accounts = P.platform_accounts() + P.participant_accounts("S1") + P.participant_accounts("C1")
    accounts += P.participant_accounts("I1", insurer=True)
    ledger = L.Ledger(accounts)
    assert ledger.apply(P.deposit("dep", "S1", 1_000_000, "dep")) == [L.OK]
    return ledger


def with_hold(row: H.LoadHold) -> L.Ledger:
    ledger = books()
    assert ledger.apply(P.hold(row.post_command_id, row.shipper_id, row.hold_fen)) == [L.OK]
    return ledger


def apply(ledger: L.Ledger, effect: S.Effect) -> None:
    assert ledger.apply(list(effect.transfers)) == [L.OK] * len(effect.transfers)


def bal(ledger: L.Ledger, account: str) -> tuple[int, int, int, int]:
    return ledger.accounts[account].balances()


def valid(effect: S.Effect) -> list[dict]:
    for e in effect.emitted:
        schemas.validate(e)
        assert e["source"] == "settlement" and e["cause"] == effect.event["id"]
        assert e["id"] == effect.event["id"] + ":0" and e["ts"] == effect.event["ts"]
        assert e["key"] == effect.load_id
    return list(effect.emitted)


# -- market --------------------------------------------------------------------------


def test_deal_resizes_the_hold_to_the_price_and_releases_the_difference():
    row = held(hold_fen=350_000)
    ledger = with_hold(row)
    ef = S.decide(deal(price_fen=300_000), row, FEES)
    assert ef.outcome == S.APPLIED
    apply(ledger, ef)
    new_hold = L.transfer_id("cmd-offer:0", "hold")
    assert ef.after == row._replace(state=H.DEALT, hold_id=new_hold, hold_fen=300_000,
                                    deal_id="deal:L1", carrier_id="C1", price_fen=300_000,
                                    updated_ms=TS)  # fmt: skip
    assert ledger.pending_states == {row.hold_id: L.VOIDED, new_hold: L.HELD}
    assert ledger.accounts["cash:S1"].available_fen == 700_000
    [out] = valid(ef)
    assert out["type"] == "hold.resized"
    assert out["data"] == {"load_id": "L1", "deal_id": "deal:L1", "shipper_id": "S1",
                           "hold_fen": 300_000, "released_fen": 50_000, "transfer_id": new_hold}  # fmt: skip


def test_deal_at_the_held_amount_still_resizes_one_path():
    row = held(hold_fen=300_000)
    ef = S.decide(deal(price_fen=300_000), row, FEES)
    apply(with_hold(row), ef)
    assert valid(ef)[0]["data"]["released_fen"] == 0
    assert ef.after.hold_id == L.transfer_id("cmd-offer:0", "hold")


def test_deal_of_an_insured_load_keeps_the_premium_held():
    row = held(hold_fen=352_000, premium_fen=2_000, insurer_id="I1")
    ef = S.decide(deal(price_fen=300_000), row, FEES)
    assert ef.after.hold_fen == 302_000 and valid(ef)[0]["data"]["released_fen"] == 50_000


def test_deal_above_the_hold_or_without_one_is_refused_and_moves_nothing():
    assert S.decide(deal(price_fen=360_000), held(hold_fen=350_000), FEES).outcome == S.REFUSED
    ef = S.decide(deal(), None, FEES)
    assert (ef.outcome, ef.reason, ef.transfers, ef.emitted) == (S.REFUSED, "no_hold", (), ())


def test_deal_on_a_dealt_load_is_ignored_the_same_deal_again():
    row = S.decide(deal(), held(), FEES).after
    again = S.decide(deal(eid="other:0"), row, FEES)
    assert (again.outcome, again.reason, again.transfers) == (S.IGNORED, "already_dealt", ())


@pytest.mark.parametrize("type_, reason", [("order.cancelled", "cancelled"),
                                           ("order.expired", "expired")])  # fmt: skip
def test_cancelled_or_expired_load_releases_its_hold(type_, reason):
    row = held()
    ledger = with_hold(row)
    ef = S.decide(event(type_, {"ref_id": "L1"}, "c:0", cause="c"), row, FEES)
    apply(ledger, ef)
    assert ef.after.state == H.RELEASED and ledger.pending_states[row.hold_id] == L.VOIDED
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000
    [out] = valid(ef)
    assert out["type"] == "hold.released"
    assert out["data"] == {"load_id": "L1", "shipper_id": "S1", "amount_fen": 350_000,
                           "reason": reason, "transfer_id": "c:0:release"}  # fmt: skip


def test_cancel_of_an_offer_or_bid_is_ignored():
    ef = S.decide(event("order.cancelled", {"ref_id": "O1"}, "c:0"), None, FEES)
    assert (ef.outcome, ef.reason, ef.transfers) == (S.IGNORED, "not_a_load", ())


def test_cancel_of_a_dealt_load_releases_nothing():
    row = S.decide(deal(), held(), FEES).after
    ef = S.decide(event("order.cancelled", {"ref_id": "L1"}, "c:0"), row, FEES)
    assert (ef.outcome, ef.transfers, ef.after) == (S.IGNORED, (), None)


def test_rejected_load_post_releases_its_hold():
    row = held()
    rejected = event("order.rejected", {"ref_id": "L1", "reason": "expired"}, "post-L1:0",
                     cause="post-L1")  # fmt: skip
    ef = S.decide(rejected, row, FEES)
    apply(with_hold(row), ef)
    assert ef.after.state == H.RELEASED and valid(ef)[0]["data"]["reason"] == "rejected"


def test_rejection_of_another_command_naming_the_load_releases_nothing():
    """A load.cancel by someone who does not own the load is refused naming the load."""
    rejected = event("order.rejected", {"ref_id": "L1", "reason": "not_owner"}, "cancel-9:0",
                     cause="cancel-9")  # fmt: skip
    ef = S.decide(rejected, held(), FEES)
    assert (ef.outcome, ef.reason, ef.transfers, ef.emitted) == (S.IGNORED, "other_command", (), ())


def test_auction_closed_without_a_bid_releases_and_with_one_does_nothing():
    row = held(mode="auction")
    unawarded = event("auction.closed", {"load_id": "L1", "bid_id": None, "price_fen": None}, "t:0")
    ef = S.decide(unawarded, row, FEES)
    apply(with_hold(row), ef)
    assert ef.after.state == H.RELEASED and valid(ef)[0]["data"]["reason"] == "unawarded"
    awarded = event("auction.closed", {"load_id": "L1", "bid_id": "B1", "price_fen": 1}, "b:1")
    assert S.decide(awarded, row, FEES).transfers == ()


def test_other_market_outcomes_are_not_the_settlers():
    assert S.load_id_of(event("load.rested", {"load_id": "L1"}, "x:0")) is None
    assert S.decide(event("load.rested", {"load_id": "L1"}, "x:0"), None, FEES).outcome == S.IGNORED


# -- shipments -----------------------------------------------------------------------


def dealt(row=None, price_fen=300_000) -> tuple[H.LoadHold, L.Ledger]:
    row = row or held()
    ledger = with_hold(row)
    ef = S.decide(deal(price_fen=price_fen), row, FEES)
    apply(ledger, ef)
    return ef.after, ledger


def test_delivery_pays_carrier_price_less_fee_and_fee_account_the_fee():
    row, ledger = dealt()
    ef = S.decide(shipment("shipment.delivered"), row, FEES)
    apply(ledger, ef)
    fee = 6_000  # 2% of 300,000
    assert ef.after.state == H.SETTLED
    assert ledger.accounts["cash:C1"].credits_posted_fen == 300_000 - fee
    assert ledger.accounts["fee_revenue"].credits_posted_fen == fee
    assert ledger.accounts["cash:S1"].available_fen == 700_000
    assert bal(ledger, "escrow") == (0, 300_000, 0, 300_000)
    [out] = valid(ef)
    assert out["type"] == "deal.settled"
    assert out["data"] == {"deal_id": "deal:L1", "load_id": "L1", "shipper_id": "S1",
                           "carrier_id": "C1", "price_fen": 300_000, "fee_fen": fee,
                           "payout_fen": 300_000 - fee, "premium_fen": 0, "insurer_id": None,
                           "refund_fen": 0, "how": "delivered"}  # fmt: skip


def test_fee_has_a_minimum():
    row, ledger = dealt(held(hold_fen=20_000), price_fen=10_000)
    ef = S.decide(shipment("shipment.delivered"), row, FEES)
    apply(ledger, ef)
    assert valid(ef)[0]["data"]["fee_fen"] == 500
    assert ledger.accounts["cash:C1"].credits_posted_fen == 9_500


def test_delivery_of_an_insured_load_pays_the_insurer_the_premium():
    row, ledger = dealt(held(hold_fen=352_000, premium_fen=2_000, insurer_id="I1"))
    ef = S.decide(shipment("shipment.delivered"), row, FEES)
    apply(ledger, ef)
    assert ledger.accounts["premiums:I1"].credits_posted_fen == 2_000
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000 - 302_000
    data = valid(ef)[0]["data"]
    assert (data["premium_fen"], data["insurer_id"], data["refund_fen"]) == (2_000, "I1", 0)


def test_shipments_event_before_its_deal_is_deferred():
    for type_ in ("shipment.delivered", "shipment.disputed", "dispute.decided"):
        for row in (None, held()):
            ef = S.decide(shipment(type_), row, FEES)
            assert (ef.outcome, ef.transfers, ef.after) == (S.DEFERRED, (), None)


def test_pickup_moves_nothing():
    row, _ = dealt()
    ef = S.decide(shipment("shipment.picked_up"), row, FEES)
    assert (ef.outcome, ef.transfers, ef.after, ef.emitted) == (S.APPLIED, (), None, ())


def test_second_delivery_of_a_settled_deal_is_ignored():
    row, _ = dealt()
    settled = S.decide(shipment("shipment.delivered"), row, FEES).after
    ef = S.decide(shipment("shipment.delivered", eid="ship-2"), settled, FEES)
    assert (ef.outcome, ef.reason, ef.transfers) == (S.IGNORED, "already_settled", ())


def test_shipments_event_of_another_deal_is_refused():
    row, _ = dealt()
    ef = S.decide(shipment("shipment.delivered", deal_id="deal:other"), row, FEES)
    assert (ef.outcome, ef.reason, ef.transfers) == (S.REFUSED, "other_deal", ())


def frozen() -> tuple[H.LoadHold, L.Ledger]:
    row, ledger = dealt()
    ef = S.decide(shipment("shipment.disputed", eid="dispute-1"), row, FEES)
    apply(ledger, ef)
    [out] = valid(ef)
    assert (out["type"], out["data"]) == (
        "escrow.frozen",
        {"deal_id": "deal:L1", "load_id": "L1", "amount_fen": 300_000},
    )
    assert ledger.pending_states[row.hold_id] == L.FROZEN and ef.after.state == H.FROZEN
    return ef.after, ledger


def test_delivery_of_a_disputed_deal_pays_nothing_until_decided():
    row, ledger = frozen()
    ef = S.decide(shipment("shipment.delivered"), row, FEES)
    assert (ef.outcome, ef.reason, ef.transfers, ef.after) == (S.APPLIED, "frozen", (), None)
    assert ledger.accounts["cash:C1"].credits_posted_fen == 0


def test_dispute_after_settlement_is_ignored_and_second_dispute_too():
    row, _ = frozen()
    assert S.decide(shipment("shipment.disputed", eid="d2"), row, FEES).outcome == S.IGNORED


def test_decision_release_pays_the_carrier_as_at_delivery():
    row, ledger = frozen()
    ef = S.decide(shipment("dispute.decided", eid="dec-1"), row, FEES)
    apply(ledger, ef)
    assert ef.after.state == H.SETTLED
    assert ledger.accounts["cash:C1"].credits_posted_fen == 294_000
    assert ledger.accounts["fee_revenue"].credits_posted_fen == 6_000
    assert valid(ef)[0]["data"]["how"] == "release"


def test_decision_refund_gives_the_shipper_the_whole_hold_back():
    row, ledger = frozen()
    ef = S.decide(shipment("dispute.decided", eid="dec-1", resolution="refund"), row, FEES)
    apply(ledger, ef)
    assert ef.after.state == H.REFUNDED
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000
    assert ledger.accounts["cash:C1"].credits_posted_fen == 0
    [out] = valid(ef)
    assert (out["type"], out["data"]) == (
        "escrow.refunded",
        {"deal_id": "deal:L1", "load_id": "L1", "shipper_id": "S1", "amount_fen": 300_000},
    )


def test_decision_split_settles_carrier_fen_as_the_price_and_refunds_the_rest():
    row, ledger = frozen()
    ef = S.decide(shipment("dispute.decided", eid="dec-1", resolution="split",
                           carrier_fen=200_000), row, FEES)  # fmt: skip
    apply(ledger, ef)
    assert ef.after.state == H.SETTLED
    assert ledger.accounts["cash:C1"].credits_posted_fen == 196_000
    assert ledger.accounts["fee_revenue"].credits_posted_fen == 4_000
    assert ledger.accounts["cash:S1"].available_fen == 800_000
    data = valid(ef)[0]["data"]
    assert (data["how"], data["price_fen"], data["fee_fen"], data["refund_fen"]) == (
        "split",
        200_000,
        4_000,
        100_000,
    )


@pytest.mark.parametrize("resolution", ["split", "release", "refund"])
def test_an_insured_deal_decided_pays_the_premium_unless_refunded(resolution):
    row, ledger = dealt(held(hold_fen=355_000, premium_fen=5_000, insurer_id="I1"))
    assert row.hold_fen == 305_000  # the price and the premium
    for ev in (shipment("shipment.disputed", eid="dispute-1"),
               shipment("dispute.decided", eid="dec-1", resolution=resolution,
                        carrier_fen=200_000 if resolution == "split" else None)):  # fmt: skip
        ef = S.decide(ev, row, FEES)
        apply(ledger, ef)
        row = ef.after
    paid = {"split": 200_000, "release": 300_000, "refund": 0}[resolution]
    premium = 0 if resolution == "refund" else 5_000
    assert ledger.accounts["premiums:I1"].credits_posted_fen == premium
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000 - paid - premium
    assert ledger.accounts["escrow"].balances() == (0, paid + premium, 0, paid + premium)
    if resolution != "refund":
        data = valid(ef)[0]["data"]
        assert (data["premium_fen"], data["insurer_id"], data["refund_fen"]) == (
            5_000, "I1", 300_000 - paid)  # fmt: skip


@pytest.mark.parametrize("carrier_fen", [None, 300_001])
def test_split_without_carrier_fen_or_above_the_price_is_refused(carrier_fen):
    row, _ = frozen()
    ef = S.decide(shipment("dispute.decided", eid="dec-1", resolution="split",
                           carrier_fen=carrier_fen), row, FEES)  # fmt: skip
    assert (ef.outcome, ef.reason, ef.transfers) == (S.REFUSED, "invalid_split", ())


def test_decision_on_an_undisputed_deal_is_refused_and_on_a_settled_one_ignored():
    row, _ = dealt()
    assert S.decide(shipment("dispute.decided"), row, FEES).reason == "not_frozen"
    settled = row._replace(state=H.SETTLED)
    assert S.decide(shipment("dispute.decided"), settled, FEES).outcome == S.IGNORED


# -- a batch -------------------------------------------------------------------------


def test_batch_applies_deferred_events_right_after_their_deal():
    row = held()
    rules = S.Rules(FEES, {"L1": row})
    delivered = shipment("shipment.delivered", eid="ship-1")
    effects = list(rules.effects([delivered, deal(), shipment("shipment.picked_up", eid="p")]))
    assert [(e.event["id"], e.outcome) for e in effects] == [
        ("ship-1", S.DEFERRED), ("cmd-offer:0", S.APPLIED), ("ship-1", S.APPLIED),
        ("p", S.APPLIED)]  # fmt: skip
    assert rules.rows["L1"].state == H.SETTLED and rules.deferred == {} and rules.changed == {"L1"}
    ledger = with_hold(row)
    assert (
        ledger.apply([t for e in effects for t in e.transfers]) == [L.OK] * 5
    )  # resize 2, settle 3


def test_batch_keeps_events_deferred_from_before_in_their_order():
    disputed = shipment("shipment.disputed", eid="d1")
    decided = shipment("dispute.decided", eid="d2", resolution="refund")
    rules = S.Rules(FEES, {"L1": held()}, {"L1": [disputed, decided]})
    effects = list(rules.effects([deal()]))
    assert [e.event["type"] for e in effects] == [
        "deal.made",
        "shipment.disputed",
        "dispute.decided",
    ]
    assert rules.rows["L1"].state == H.REFUNDED


def test_batch_event_waits_while_its_deal_is_not_seen():
    rules = S.Rules(FEES, {})
    [ef] = rules.effects([shipment("shipment.delivered", load_id="L9")])
    assert ef.outcome == S.DEFERRED and list(rules.deferred) == ["L9"] and not rules.changed


def test_undone_deal_keeps_its_deferred_events_and_the_row():
    row = held()
    rules = S.Rules(FEES, {"L1": row}, {"L1": [shipment("shipment.delivered")]})
    effects = rules.effects([deal(), event("order.cancelled", {"ref_id": "L1"}, "c:0")])
    first = next(effects)
    rules.undo(first)  # the ledger refused the re-size
    rest = list(effects)
    assert [e.event["type"] for e in rest] == ["order.cancelled"]  # decided on the held row
    assert rest[0].outcome == S.APPLIED and rules.rows["L1"].state == H.RELEASED
    assert [e["id"] for e in rules.deferred["L1"]] == ["ship-1"]


def test_the_same_events_give_the_same_bytes():
    from services.common.envelope import encode

    def run():
        rules = S.Rules(FEES, {"L1": held()})
        return [encode(e) for ef in rules.effects([deal(), shipment("shipment.delivered")])
                for e in ef.emitted]  # fmt: skip

    assert run() == run() and len(run()) == 2


def test_settler_rules_import_nothing_of_the_world():
    tree = ast.parse((Path(settlement.__file__).parent / "settler.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncpg", "asyncio", "aiokafka", "time", "datetime", "logging"}
