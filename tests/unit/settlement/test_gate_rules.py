"""The funding gate's rules (services/settlement/gate.py), over the pure ledger: what each
command becomes, the precedence of the load rejections, the hold amounts, and outputs
that are the same bytes on every run."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from services.common import schemas
from services.common.envelope import decode, encode, make
from services.settlement import gate as G
from services.settlement import holds as H
from services.settlement import ledger as L
from services.settlement import postings as P
from tests.unit.common.samples import AUCTION_LOAD, DATA, LANE_KEY

TS = 1_767_225_600_000
RULES = G.Rules(auction_hold_cap_fen=2_000_000)


def command(type_: str, data: dict, cid: str, key: str | None = None) -> G.Command:
    if key is None:
        key = (
            LANE_KEY if "lane" in data or type_ in G.FORWARDED_TYPES else data.get("participant_id")
        )
    envelope = make(type_, data, key, "gateway", TS, id=cid)
    return G.Command(decode(encode(envelope)), encode(envelope), key.encode())


def load(cid: str = "c-load", **changes) -> G.Command:
    return command("load.post", dict(DATA["load.post"], **changes), cid)


def auction(cid: str = "c-auction", **auction_changes) -> G.Command:
    data = copy.deepcopy(AUCTION_LOAD)
    data["auction"].update(auction_changes)
    return command("load.post", data, cid)


def shipper(pid: str = "S1", status: str = G.ACTIVE, role: str = "shipper") -> G.Participant:
    return G.Participant(pid, role, status, TS - 1)


def books(**cash_fen: int) -> L.Ledger:
    """A ledger with the platform accounts and, per participant, a cash account holding
    that much (deposited from clearing)."""
    ledger = L.Ledger(P.platform_accounts())
    for pid, fen in cash_fen.items():
        ledger.open_accounts(P.participant_accounts(pid))
        if fen:
            assert ledger.apply(P.deposit(f"seed-{pid}", pid, fen, f"seed-{pid}")) == [L.OK]
    return ledger


def run(commands, participants=(), held=(), ledger=None):
    """What the adapter does, over a pure ledger: plan, open, apply, decide."""
    ledger = ledger if ledger is not None else books()
    plan = G.plan_batch(commands, {p.id: p for p in participants}, set(held), RULES)
    ledger.open_accounts(plan.accounts)
    decisions = plan.decide(ledger.apply(plan.transfers))
    for d in decisions:
        for o in d.outputs:
            schemas.validate(decode(o.value))  # every output is a valid event
    return decisions, plan, ledger


def events(decision: G.Decision, topic: str = G.SETTLEMENT) -> list[dict]:
    return [decode(o.value) for o in decision.outputs if o.topic == topic]


def held_fen(ledger: L.Ledger, pid: str) -> int:
    return ledger.accounts[P.cash_account_id(pid)].debits_pending_fen


# -- load.post: funded --------------------------------------------------------------------


def test_market_load_is_held_at_its_limit_forwarded_byte_for_byte_and_announced():
    c = load()
    (d,), _, ledger = run([c], [shipper()], ledger=books(S1=1_000_000))
    assert (d.outcome, d.reason) == (G.FUNDED, None)
    forwarded = [o for o in d.outputs if o.topic == G.ORDERS]
    assert forwarded == [G.Output(G.ORDERS, c.key, c.value)]
    (funded,) = events(d)
    assert funded == {
        "id": "c-load:gate:0", "type": "load.funded", "v": 1, "ts": TS, "key": "L1",
        "source": "settlement", "cause": "c-load",
        "data": {"load_id": "L1", "shipper_id": "S1", "hold_fen": 350_000,
                 "transfer_id": "c-load:hold"},
    }  # fmt: skip
    assert [o.key for o in d.outputs if o.topic == G.SETTLEMENT] == [b"L1"]
    assert held_fen(ledger, "S1") == 350_000
    assert ledger.transfers["c-load:hold"].kind == L.PENDING
    assert d.load_hold == H.LoadHold(
        load_id="L1", shipper_id="S1", post_command_id="c-load", lane_key=LANE_KEY,
        mode="market", hold_id="c-load:hold", hold_fen=350_000, insurer_id=None,
        premium_fen=0, state=H.HELD, updated_ms=TS,
    )  # fmt: skip


def test_auction_with_reserve_is_held_at_the_reserve_and_forwarded_unchanged():
    c = auction()
    (d,), _, ledger = run([c], [shipper()], ledger=books(S1=1_000_000))
    assert d.outcome == G.FUNDED
    assert G.Output(G.ORDERS, c.key, c.value) in d.outputs
    assert held_fen(ledger, "S1") == 400_000
    assert d.load_hold.mode == "auction" and d.load_hold.hold_fen == 400_000


def test_auction_without_reserve_is_held_at_the_cap_which_it_carries_as_its_reserve():
    c = auction(reserve_fen=None)
    (d,), _, ledger = run([c], [shipper()], ledger=books(S1=5_000_000))
    assert held_fen(ledger, "S1") == RULES.auction_hold_cap_fen
    (forwarded,) = [o for o in d.outputs if o.topic == G.ORDERS]
    assert forwarded.key == c.key
    sent = decode(forwarded.value)
    expected = copy.deepcopy(c.envelope)
    expected["data"]["auction"]["reserve_fen"] = RULES.auction_hold_cap_fen
    assert sent == expected  # the same id, ts, key, cause; only the reserve set
    assert list(sent) == list(c.envelope) and list(sent["data"]) == list(c.data)
    assert forwarded.value == encode(expected)


def test_auction_without_reserve_and_instant_above_the_cap_is_held_at_the_instant_price():
    c = auction(reserve_fen=None, instant_fen=3_000_000)
    (d,), _, ledger = run([c], [shipper()], ledger=books(S1=5_000_000))
    assert held_fen(ledger, "S1") == 3_000_000
    (forwarded,) = [decode(o.value) for o in d.outputs if o.topic == G.ORDERS]
    assert forwarded["data"]["auction"]["reserve_fen"] == 3_000_000


def test_insured_load_holds_the_premium_too():
    insurance = {"insurer_id": "I1", "premium_fen": 7_000}
    (d,), _, ledger = run([load(insurance=insurance)], [shipper()], ledger=books(S1=1_000_000))
    assert held_fen(ledger, "S1") == 357_000
    assert events(d)[0]["data"]["hold_fen"] == 357_000
    assert (d.load_hold.insurer_id, d.load_hold.premium_fen, d.load_hold.hold_fen) == (
        "I1", 7_000, 357_000)  # fmt: skip


def test_insured_auction_without_reserve_forwards_the_cap_and_holds_cap_plus_premium():
    data = copy.deepcopy(AUCTION_LOAD)
    data["auction"]["reserve_fen"] = None
    data["insurance"] = {"insurer_id": "I1", "premium_fen": 9_000}
    assert G.hold_amount(data, RULES) == (2_009_000, 2_000_000)


def test_hold_at_exactly_the_balance_is_funded():
    (d,), _, ledger = run([load()], [shipper()], ledger=books(S1=350_000))
    assert d.outcome == G.FUNDED
    assert ledger.accounts["cash:S1"].available_fen == 0


# -- load.post: rejected, and the precedence ----------------------------------------------


def rejected(decision: G.Decision) -> str:
    assert decision.outcome == G.REJECTED
    assert not [o for o in decision.outputs if o.topic == G.ORDERS]  # nothing forwarded
    assert decision.load_hold is None
    (event,) = events(decision)
    assert event["type"] == "load.rejected" and event["key"] == "L1"
    assert event["data"] == {"load_id": "L1", "shipper_id": "S1", "reason": decision.reason}
    assert (event["id"], event["cause"], event["ts"]) == (f"{decision.command_id}:gate:0",
                                                          decision.command_id, TS)  # fmt: skip
    return decision.reason


@pytest.mark.parametrize(
    ("participants", "held", "cash", "reason"),
    [
        # unknown_shipper before everything: no row, even with a duplicate id and no money
        ([], ["L1"], {}, "unknown_shipper"),
        ([shipper(role="carrier")], ["L1"], {"S1": 0}, "unknown_shipper"),
        ([shipper(role="insurer")], [], {"S1": 9_000_000}, "unknown_shipper"),
        # suspended before duplicate_id and insufficient_funds
        ([shipper(status=G.SUSPENDED)], ["L1"], {"S1": 0}, "suspended"),
        ([shipper(status=G.SUSPENDED)], [], {"S1": 9_000_000}, "suspended"),
        # duplicate_id before insufficient_funds
        ([shipper()], ["L1"], {"S1": 0}, "duplicate_id"),
        ([shipper()], ["L1"], {"S1": 9_000_000}, "duplicate_id"),
        # insufficient_funds: one fen short, nothing at all, or no cash account
        ([shipper()], [], {"S1": 349_999}, "insufficient_funds"),
        ([shipper()], [], {"S1": 0}, "insufficient_funds"),
        ([shipper()], [], {}, "insufficient_funds"),
    ],
)
def test_load_rejections_in_their_order(participants, held, cash, reason):
    ledger = books(**cash)
    before = {a.id: a.balances() for a in ledger.accounts.values()}
    (d,), _, ledger = run([load()], participants, held, ledger)
    assert rejected(d) == reason
    assert {a.id: a.balances() for a in ledger.accounts.values()} == before
    assert "c-load:hold" not in ledger.transfers


def test_a_load_id_claimed_earlier_in_the_batch_is_duplicate_id_even_if_that_one_was_unfunded():
    (first, second), _, ledger = run(
        [load("c1", limit_fen=900_000), load("c2", limit_fen=100_000)],
        [shipper()],
        ledger=books(S1=500_000),
    )
    assert rejected(first) == "insufficient_funds"
    assert rejected(second) == "duplicate_id"
    assert held_fen(ledger, "S1") == 0


def test_holds_of_one_batch_draw_on_the_balance_in_order():
    ds, _, ledger = run(
        [load("c1", load_id="L1"), load("c2", load_id="L2"), load("c3", load_id="L3", limit_fen=1)],
        [shipper()],
        ledger=books(S1=700_001),
    )
    assert [d.outcome for d in ds] == [G.FUNDED, G.FUNDED, G.FUNDED]
    ds, _, _ = run([load("c4", load_id="L4", limit_fen=1)], [shipper()], ledger=ledger)
    assert ds[0].reason == "insufficient_funds"


# -- market commands pass through ----------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(G.FORWARDED_TYPES))
def test_market_commands_are_forwarded_byte_for_byte_with_their_key(type_):
    c = command(type_, DATA[type_], f"c-{type_}", key="some>lane>key")
    (d,), plan, _ = run([c])
    assert d.outputs == (G.Output(G.ORDERS, b"some>lane>key", c.value),)
    assert (d.outcome, plan.transfers, plan.accounts) == (G.FORWARDED, [], [])


# -- participants ------------------------------------------------------------------------


def test_register_opens_the_accounts_and_records_an_active_participant_without_output():
    (d,), plan, ledger = run([command("participant.register", DATA["participant.register"], "r1")])
    assert (d.outcome, d.outputs) == (G.REGISTERED, ())
    assert plan.participants == {"S1": G.Participant("S1", "shipper", G.ACTIVE, TS)}
    assert "cash:S1" in ledger.accounts and "premiums:S1" not in ledger.accounts


def test_an_insurer_gets_its_premiums_account_too():
    c = command("participant.register", {"participant_id": "I1", "role": "insurer"}, "r1")
    _, _, ledger = run([c])
    assert ledger.accounts["premiums:I1"].kind == L.INSURER_PREMIUMS
    assert ledger.accounts["cash:I1"].kind == L.CASH


def test_register_deposit_and_load_in_one_batch_fund_the_load():
    cs = [
        command("participant.register", DATA["participant.register"], "r1"),
        command("funds.deposit", DATA["funds.deposit"], "d1"),
        load(),
    ]
    ds, _, ledger = run(cs)
    assert [d.outcome for d in ds] == [G.REGISTERED, G.DEPOSITED, G.FUNDED]
    assert held_fen(ledger, "S1") == 350_000


def test_suspend_marks_the_participant_and_rejects_its_next_load():
    cs = [command("participant.suspend", DATA["participant.suspend"], "s1"), load()]
    (s, d), plan, _ = run(cs, [shipper()], ledger=books(S1=1_000_000))
    assert (s.outcome, s.outputs) == (G.PARTICIPANT_SUSPENDED, ())
    assert plan.participants["S1"] == G.Participant("S1", "shipper", G.SUSPENDED, TS)
    assert rejected(d) == "suspended"


def test_register_again_reactivates_a_suspended_participant():
    cs = [command("participant.register", DATA["participant.register"], "r2"), load()]
    (_, d), plan, _ = run(cs, [shipper(status=G.SUSPENDED)], ledger=books(S1=1_000_000))
    assert plan.participants["S1"].status == G.ACTIVE and d.outcome == G.FUNDED


def test_suspend_of_an_unknown_participant_changes_nothing():
    (d,), plan, _ = run([command("participant.suspend", {"participant_id": "X"}, "s1")])
    assert (d.outcome, d.reason, d.outputs, plan.participants) == (
        G.IGNORED, "unknown_participant", (), {})  # fmt: skip


# -- money -----------------------------------------------------------------------------


def test_deposit_credits_cash_and_says_so():
    (d,), _, ledger = run([command("funds.deposit", DATA["funds.deposit"], "d1")], [shipper()],
                          ledger=books(S1=0))  # fmt: skip
    assert d.outcome == G.DEPOSITED
    (event,) = events(d)
    assert (event["type"], event["key"], event["id"], event["cause"]) == (
        "funds.deposited", "S1", "d1:gate:0", "d1")  # fmt: skip
    assert event["data"] == dict(
        DATA["funds.deposit"], transfer_id=P.bank_transfer_id("S1", "ICBC-0001", "deposit")
    )
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000


def test_deposit_of_an_unknown_participant_opens_its_cash_account_and_keeps_the_money():
    (d,), plan, ledger = run([command("funds.deposit", DATA["funds.deposit"], "d1")])
    assert d.outcome == G.DEPOSITED and plan.participants == {}
    assert ledger.accounts["cash:S1"].available_fen == 1_000_000


@pytest.mark.parametrize(
    ("cash", "outcome", "reason"),
    [
        ({"C1": 200_000}, G.WITHDRAWN, None),
        ({"C1": 199_999}, G.WITHDRAWAL_REJECTED, "insufficient_funds"),
        ({}, G.WITHDRAWAL_REJECTED, "unknown_participant"),
    ],
)
def test_withdrawal(cash, outcome, reason):
    c = command("funds.withdraw", DATA["funds.withdraw"], "w1")
    (d,), _, ledger = run([c], ledger=books(**cash))
    assert (d.outcome, d.reason) == (outcome, reason)
    (event,) = events(d)
    assert event["key"] == "C1" and event["id"] == "w1:gate:0"
    if outcome == G.WITHDRAWN:
        assert event["type"] == "funds.withdrawn"
        assert event["data"] == dict(
            DATA["funds.withdraw"], transfer_id=P.bank_transfer_id("C1", "ICBC-0002", "withdrawal")
        )
        assert ledger.accounts["cash:C1"].available_fen == 0
    else:
        assert event["type"] == "withdrawal.rejected"
        assert event["data"] == dict(DATA["funds.withdraw"], reason=reason)


def test_a_withdrawal_cannot_take_money_held_for_a_load():
    cs = [load(), command("funds.withdraw", dict(DATA["funds.withdraw"], participant_id="S1",
                                                 amount_fen=650_001), "w1")]  # fmt: skip
    (_, w), _, _ = run(cs, [shipper()], ledger=books(S1=1_000_000))
    assert w.reason == "insufficient_funds"


def deposit(cid: str, bank_ref: str, pid: str = "S1", amount_fen: int = 1_000) -> G.Command:
    data = {"participant_id": pid, "amount_fen": amount_fen, "bank_ref": bank_ref}
    return command("funds.deposit", data, cid)


def withdraw(cid: str, bank_ref: str, pid: str = "S1", amount_fen: int = 1_000) -> G.Command:
    data = {"participant_id": pid, "amount_fen": amount_fen, "bank_ref": bank_ref}
    return command("funds.withdraw", data, cid)


@pytest.mark.parametrize("same_batch", [True, False])
@pytest.mark.parametrize("amount_fen", [1_000, 2_000])
def test_a_bank_reference_deposited_again_is_refused_and_moves_nothing(same_batch, amount_fen):
    first, again = deposit("d1", "B-1"), deposit("d2", "B-1", amount_fen=amount_fen)
    ledger = books(S1=0)
    if same_batch:
        (d1, d2), _, _ = run([first, again], ledger=ledger)
    else:
        (d1,), _, _ = run([first], ledger=ledger)
        (d2,), _, _ = run([again], ledger=ledger)
    assert (d1.outcome, d2.outcome, d2.reason) == (G.DEPOSITED, G.DEPOSIT_REJECTED,
                                                   "duplicate_bank_ref")  # fmt: skip
    (event,) = events(d2)
    assert (event["type"], event["id"], event["cause"], event["key"]) == (
        "deposit.rejected", "d2:gate:0", "d2", "S1")  # fmt: skip
    assert event["data"] == {"participant_id": "S1", "amount_fen": amount_fen,
                             "bank_ref": "B-1", "reason": "duplicate_bank_ref"}  # fmt: skip
    assert ledger.accounts["cash:S1"].available_fen == 1_000
    assert [t.cause for t in ledger.transfers.values() if t.code == "deposit"] == ["d1"]


def test_a_withdrawal_reference_pays_out_once_and_a_refused_one_may_be_sent_again():
    ledger = books(S1=1_500)
    (w1, w2, w3), _, _ = run([withdraw("w1", "P-1"), withdraw("w2", "P-1"),
                              withdraw("w3", "P-2")], ledger=ledger)  # fmt: skip
    assert [(w.outcome, w.reason) for w in (w1, w2, w3)] == [
        (G.WITHDRAWN, None),
        (G.WITHDRAWAL_REJECTED, "duplicate_bank_ref"),
        (G.WITHDRAWAL_REJECTED, "insufficient_funds"),  # 500 left
    ]
    assert [e["type"] for e in events(w2)] == ["withdrawal.rejected"]
    # P-2 moved nothing, so after a deposit the same reference pays out.
    (_, w4), _, _ = run([deposit("d9", "B-9"), withdraw("w4", "P-2")], ledger=ledger)
    assert w4.outcome == G.WITHDRAWN
    assert ledger.accounts["cash:S1"].available_fen == 1_500 + 1_000 - 2_000


def test_a_bank_reference_is_the_participants_own_and_per_kind():
    # The same reference by two participants, and as a deposit and as a withdrawal,
    # names four movements; ids are not confused by separators inside the ids either.
    ledger = books(S1=0, S2=0)
    ledger.open_accounts(P.participant_accounts("a:b") + P.participant_accounts("a"))
    cs = [deposit("d1", "B-1"), deposit("d2", "B-1", pid="S2"), withdraw("w1", "B-1"),
          deposit("d3", "c", pid="a:b"), deposit("d4", "b:c", pid="a")]  # fmt: skip
    decisions, _, _ = run(cs, ledger=ledger)
    assert [d.outcome for d in decisions] == [G.DEPOSITED, G.DEPOSITED, G.WITHDRAWN,
                                              G.DEPOSITED, G.DEPOSITED]  # fmt: skip
    assert len({P.bank_transfer_id(p, r, "deposit") for p, r in [("a:b", "c"), ("a", "b:c")]}) == 2


def test_a_ledger_refusal_that_is_nobodys_doing_produces_nothing():
    big = 2**63 - 1
    ledger = books(S1=0)
    ledger.apply(P.deposit("seed-big", "S1", big, "seed-big"))
    (d,), _, _ = run([command("funds.deposit", dict(DATA["funds.deposit"], amount_fen=1), "d1")],
                     ledger=ledger)  # fmt: skip
    assert (d.outcome, d.reason, d.outputs) == (G.LEDGER_REFUSED, L.OVERFLOWS, ())


# -- determinism and contract ---------------------------------------------------------------


def test_the_same_batch_against_the_same_state_gives_the_same_bytes():
    def batch():
        return [
            command("participant.register", DATA["participant.register"], "r1"),
            command("funds.deposit", DATA["funds.deposit"], "d1"),
            load(),
            auction(reserve_fen=None, cid="c-a"),
            command("offer.post", DATA["offer.post"], "o1"),
            command("funds.withdraw", DATA["funds.withdraw"], "w1"),
        ]

    first, _, _ = run(batch())
    again, _, _ = run(batch())
    assert first == again
    assert [d.outcome for d in first] == [G.REGISTERED, G.DEPOSITED, G.FUNDED, G.REJECTED,
                                          G.FORWARDED, G.WITHDRAWAL_REJECTED]  # fmt: skip


def test_decide_wants_one_result_per_transfer():
    plan = G.plan_batch([load()], {"S1": shipper()}, set(), RULES)
    with pytest.raises(ValueError):
        plan.decide([])


def test_only_gate_commands_are_planned():
    assert not G.is_command("clock.tick") and not G.is_command("deal.made")
    assert all(G.is_command(t) for t in G.COMMAND_TYPES)
    with pytest.raises(ValueError):
        G.plan_batch([command("clock.tick", {}, "t1", key="k")], {}, set(), RULES)


def test_rows_needed_by_a_batch():
    cs = [load(), command("participant.suspend", {"participant_id": "X"}, "s1"),
          command("funds.deposit", DATA["funds.deposit"], "d1")]  # fmt: skip
    assert G.participant_ids(cs) == {"S1", "X"}
    assert G.load_ids(cs) == {"L1"}


def test_gate_rules_import_nothing_of_the_world():
    tree = ast.parse(Path(G.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncpg", "asyncio", "aiokafka", "time", "datetime", "logging",
                           "random", "os", "fastapi"}  # fmt: skip
