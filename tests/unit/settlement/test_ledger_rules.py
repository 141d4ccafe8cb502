"""The ledger's rules, one example per result word (ledger.RESULTS), then the money path
of a load through postings.py."""

from __future__ import annotations

import pytest

from services.settlement import ledger as L
from services.settlement import postings as P
from services.settlement.ledger import Transfer

SHIPPER, CARRIER, INSURER = "s1", "c1", "i1"
CASH_S, CASH_C = P.cash_account_id(SHIPPER), P.cash_account_id(CARRIER)


def books(funded_fen: int = 10_000) -> L.Ledger:
    ledger = L.Ledger(P.platform_accounts() + P.participant_accounts(SHIPPER)
                      + P.participant_accounts(CARRIER) + P.participant_accounts(INSURER, insurer=True))  # fmt: skip
    assert ledger.apply(P.deposit("fund", SHIPPER, funded_fen, "fund")) == [L.OK]
    # No kind of ours lacks both limits; this one lets the clearing limit be reached.
    ledger.open_accounts([L.Account("unlimited", L.CLEARING)])
    return ledger


def pay(tid: str, amount, dr: str = CASH_S, cr: str = CASH_C, **kw) -> Transfer:
    return Transfer(tid, L.SINGLE_PHASE, dr, cr, amount, **kw)


def hold(tid: str, amount: int = 1_000, **kw) -> Transfer:
    return Transfer(tid, L.PENDING, CASH_S, P.ESCROW_ACCOUNT_ID, amount, **kw)


def resolve(tid: str, kind: str, pending_id: str = "h", amount=None, **kw) -> Transfer:
    return Transfer(tid, kind, amount_fen=amount, pending_id=pending_id, **kw)


def balances(ledger: L.Ledger, account_id: str) -> tuple[int, int, int, int]:
    return ledger.accounts[account_id].balances()


# (setup transfers, the transfer under test, its expected result)
CASES = {
    L.OK: ([], pay("t", 100)),
    L.ID_MUST_NOT_BE_EMPTY: ([], pay("", 100)),
    L.EXISTS: ([pay("t", 100)], pay("t", 100)),
    L.EXISTS_WITH_DIFFERENT_FIELDS: ([pay("t", 100)], pay("t", 101)),
    L.KIND_INVALID: ([], Transfer("t", "teleport", CASH_S, CASH_C, 100)),
    L.PENDING_ID_MUST_BE_EMPTY: ([hold("h")], pay("t", 100, pending_id="h")),
    L.AMOUNT_MUST_BE_POSITIVE: ([], pay("t", 0)),
    L.ACCOUNTS_MUST_BE_DIFFERENT: ([], pay("t", 100, cr=CASH_S)),
    L.DEBIT_ACCOUNT_NOT_FOUND: ([], pay("t", 100, dr="cash:nobody")),
    L.CREDIT_ACCOUNT_NOT_FOUND: ([], pay("t", 100, cr="cash:nobody")),
    L.EXCEEDS_CREDITS: ([], pay("t", 10_001)),
    L.EXCEEDS_DEBITS: ([], pay("t", 10_001, dr="unlimited", cr=P.CLEARING_ACCOUNT_ID)),
    L.OVERFLOWS: ([], pay("t", L.BALANCE_MAX_FEN, dr=P.CLEARING_ACCOUNT_ID)),
    L.PENDING_ID_REQUIRED: ([], resolve("t", L.POST_PENDING, pending_id="")),
    L.PENDING_NOT_FOUND: ([], resolve("t", L.POST_PENDING)),
    L.PENDING_TRANSFER_NOT_PENDING: ([pay("h", 100)], resolve("t", L.VOID_PENDING)),
    L.PENDING_DIFFERENT_ACCOUNTS: ([hold("h")], Transfer("t", L.POST_PENDING, CASH_S, CASH_C, pending_id="h")),
    L.PENDING_ALREADY_POSTED: ([hold("h"), resolve("p", L.POST_PENDING)], resolve("t", L.VOID_PENDING)),
    L.PENDING_ALREADY_VOIDED: ([hold("h"), resolve("v", L.VOID_PENDING)], resolve("t", L.POST_PENDING)),
    L.PENDING_FROZEN: ([hold("h"), resolve("f", L.FREEZE_PENDING)], resolve("t", L.POST_PENDING)),
    L.PENDING_ALREADY_FROZEN: ([hold("h"), resolve("f", L.FREEZE_PENDING)], resolve("t", L.FREEZE_PENDING)),
    L.PENDING_NOT_FROZEN: ([hold("h")], resolve("t", L.UNFREEZE_PENDING)),
    L.EXCEEDS_PENDING_AMOUNT: ([hold("h", 1_000)], resolve("t", L.POST_PENDING, amount=1_001)),
    L.PENDING_DIFFERENT_AMOUNT: ([hold("h", 1_000)], resolve("t", L.VOID_PENDING, amount=999)),
}  # fmt: skip


def test_every_result_word_has_an_example():
    chains = {L.LINKED_EVENT_FAILED, L.LINKED_EVENT_CHAIN_OPEN}
    assert set(CASES) | chains == set(L.RESULTS)


@pytest.mark.parametrize("expected", list(CASES))
def test_result(expected):
    setup, transfer = CASES[expected]
    ledger = books()
    assert ledger.apply(setup) == [L.OK] * len(setup)
    before = {a.id: a.balances() for a in ledger.accounts.values()}
    assert ledger.apply([transfer]) == [expected]
    if expected != L.OK:  # a refusal changes nothing
        assert {a.id: a.balances() for a in ledger.accounts.values()} == before


def test_a_failed_chain_leaves_no_trace_and_names_its_failing_transfer():
    ledger = books(1_000)
    before = {a.id: a.balances() for a in ledger.accounts.values()}
    chain = [hold("h", 600, linked=True), resolve("p", L.POST_PENDING, amount=600, linked=True),
             pay("x", 500)]  # 600 posted leaves 400: the third transfer fails  # fmt: skip
    assert ledger.apply(chain) == [L.LINKED_EVENT_FAILED, L.LINKED_EVENT_FAILED, L.EXCEEDS_CREDITS]
    assert {a.id: a.balances() for a in ledger.accounts.values()} == before
    assert (
        set(ledger.transfers) == {P.bank_transfer_id(SHIPPER, "fund", "deposit")}
        and "h" not in ledger.pending_states
    )


def test_a_chain_left_open_at_the_end_of_the_batch_is_refused():
    ledger = books()
    assert ledger.apply([pay("a", 1), pay("b", 1, linked=True), pay("c", 1, linked=True)]) == [
        L.OK, L.LINKED_EVENT_CHAIN_OPEN, L.LINKED_EVENT_CHAIN_OPEN]  # fmt: skip
    assert "b" not in ledger.transfers


def test_a_chain_applied_before_returns_exists_for_every_transfer():
    ledger = books()
    chain = [hold("h", linked=True), pay("x", 100)]
    assert ledger.apply(chain) == [L.OK, L.OK]
    assert ledger.apply(chain) == [L.EXISTS, L.EXISTS]


def test_a_chain_that_uses_an_id_twice_fails_as_a_whole():
    ledger = books()
    assert ledger.apply([pay("x", 100, linked=True), pay("x", 100)]) == [
        L.LINKED_EVENT_FAILED, L.EXISTS_WITH_DIFFERENT_FIELDS]  # fmt: skip
    assert ledger.transfers.keys() == {P.bank_transfer_id(SHIPPER, "fund", "deposit")}


def test_a_hold_counts_against_what_the_shipper_may_spend():
    ledger = books(1_000)
    assert ledger.apply([hold("h", 800), pay("x", 201), pay("y", 200)]) == [
        L.OK, L.EXCEEDS_CREDITS, L.OK]  # fmt: skip
    assert ledger.accounts[CASH_S].available_fen == 0


def test_posting_less_than_the_hold_releases_the_rest():
    ledger = books(1_000)
    ledger.apply([hold("h", 800)])
    assert ledger.apply([resolve("p", L.POST_PENDING, amount=300)]) == [L.OK]
    assert balances(ledger, CASH_S) == (0, 300, 0, 1_000)
    assert balances(ledger, P.ESCROW_ACCOUNT_ID) == (0, 0, 0, 300)
    assert ledger.pending_states["h"] == L.POSTED
    assert ledger.transfers["p"].amount_fen == 300


def test_void_releases_the_hold_and_a_resolution_records_the_pending_accounts():
    ledger = books(1_000)
    ledger.apply([hold("h", 800), resolve("v", L.VOID_PENDING)])
    assert balances(ledger, CASH_S) == (0, 0, 0, 1_000)
    v = ledger.transfers["v"]
    assert (v.debit_account_id, v.credit_account_id, v.amount_fen) == (
        CASH_S,
        P.ESCROW_ACCOUNT_ID,
        800,
    )


def test_a_retried_resolution_may_name_what_it_left_out_before():
    ledger = books()
    ledger.apply([hold("h", 800), resolve("p", L.POST_PENDING)])
    full = Transfer("p", L.POST_PENDING, CASH_S, P.ESCROW_ACCOUNT_ID, 800, pending_id="h")
    assert ledger.apply([full, resolve("p", L.POST_PENDING)]) == [L.EXISTS, L.EXISTS]
    assert ledger.apply([resolve("p", L.POST_PENDING, amount=799)]) == [
        L.EXISTS_WITH_DIFFERENT_FIELDS
    ]


def test_a_frozen_hold_keeps_its_money_reserved_until_unfrozen():
    ledger = books(1_000)
    ledger.apply([hold("h", 800), resolve("f", L.FREEZE_PENDING)])
    assert balances(ledger, CASH_S) == (800, 0, 0, 1_000)
    assert ledger.apply([resolve("v", L.VOID_PENDING)]) == [L.PENDING_FROZEN]
    assert ledger.apply([resolve("u", L.UNFREEZE_PENDING), resolve("v", L.VOID_PENDING)]) == [
        L.OK,
        L.OK,
    ]
    assert balances(ledger, CASH_S) == (0, 0, 0, 1_000)


def test_transfer_ids_come_from_the_causing_event():
    assert L.transfer_id("evt-7", "hold") == "evt-7:hold"
    assert P.hold("evt-7", SHIPPER, 5)[0].id == "evt-7:hold"


def test_account_limits_follow_the_kind():
    cash, clearing = L.new_account("cash:a", L.CASH), L.new_account("clearing", L.CLEARING)
    assert cash.debits_must_not_exceed_credits and not cash.credits_must_not_exceed_debits
    assert clearing.credits_must_not_exceed_debits and not clearing.debits_must_not_exceed_credits
    with pytest.raises(ValueError):
        L.new_account("x", "piggy_bank")


def test_opening_an_account_twice_is_a_no_op_unless_it_differs():
    ledger = books()
    assert ledger.open_accounts([L.new_account(CASH_S, L.CASH)]) == [L.EXISTS]
    assert ledger.accounts[CASH_S].credits_posted_fen == 10_000
    assert ledger.open_accounts([L.new_account(CASH_S, L.ESCROW)]) == [
        L.EXISTS_WITH_DIFFERENT_FIELDS
    ]


# -- the money path of a load --------------------------------------------------------------


def test_fee_is_basis_points_rounded_half_up_with_a_minimum_and_at_most_the_price():
    fees = P.FeeSchedule(bps=150, minimum_fen=500)
    assert fees.fee_fen(1_000_000) == 15_000
    assert fees.fee_fen(100_100) == 1_502  # 1501.5 rounds up
    assert fees.fee_fen(10_000) == 500
    assert fees.fee_fen(300) == 300


def test_load_from_hold_to_delivery_pays_carrier_fee_and_insurer_once():
    ledger = books(100_000)
    assert ledger.apply(P.hold("load1", SHIPPER, 80_000)) == [L.OK]
    assert ledger.apply(P.resize_hold("deal1", "load1:hold", SHIPPER, 61_000)) == [L.OK, L.OK]
    assert ledger.pending_states["load1:hold"] == L.VOIDED
    assert ledger.accounts[CASH_S].available_fen == 39_000
    fee = P.FeeSchedule(150, 500).fee_fen(60_000)
    legs = P.settle(
        "dlv1", "deal1:hold", CARRIER, 60_000, fee, insurer_id=INSURER, premium_fen=1_000
    )
    assert [t.linked for t in legs] == [True, True, True, False]
    assert ledger.apply(legs) == [L.OK] * 4
    assert ledger.apply(legs) == [L.EXISTS] * 4  # the settler saw the event twice
    assert ledger.accounts[CASH_C].credits_posted_fen == 60_000 - 900
    assert ledger.accounts[P.FEE_ACCOUNT_ID].credits_posted_fen == 900
    assert ledger.accounts[P.premiums_account_id(INSURER)].credits_posted_fen == 1_000
    assert ledger.accounts[P.ESCROW_ACCOUNT_ID].balances() == (0, 61_000, 0, 61_000)
    assert ledger.accounts[CASH_S].available_fen == 39_000


def test_dispute_resolutions_release_refund_or_split():
    ledger = books(100_000)
    for n in range(3):
        ledger.apply(P.hold(f"l{n}", SHIPPER, 10_000) + P.freeze(f"d{n}", f"l{n}:hold"))
    assert ledger.apply(P.settle("x", "l0:hold", CARRIER, 10_000, 0)) == [
        L.PENDING_FROZEN,
        L.LINKED_EVENT_FAILED,
    ]
    assert ledger.apply(P.resolve_release("r0", "l0:hold", CARRIER, 10_000, 500)) == [L.OK] * 4
    assert ledger.apply(P.resolve_refund("r1", "l1:hold")) == [L.OK, L.OK]
    assert ledger.apply(P.resolve_split("r2", "l2:hold", CARRIER, 4_000, 500)) == [L.OK] * 4
    assert ledger.accounts[CASH_C].credits_posted_fen == 9_500 + 3_500
    assert ledger.accounts[P.FEE_ACCOUNT_ID].credits_posted_fen == 1_000
    assert ledger.accounts[CASH_S].available_fen == 100_000 - 10_000 - 4_000


def test_release_of_a_hold_returns_everything_to_the_shipper():
    ledger = books(10_000)
    ledger.apply(P.hold("l", SHIPPER, 10_000))
    assert ledger.apply(P.withdrawal("w", SHIPPER, 1, "w")) == [L.EXCEEDS_CREDITS]
    assert ledger.apply(P.release_hold("c", "l:hold")) == [L.OK]
    assert ledger.apply(P.withdrawal("w", SHIPPER, 10_000, "w")) == [L.OK]
    assert ledger.accounts[P.CLEARING_ACCOUNT_ID].balances() == (0, 10_000, 0, 10_000)
