"""The invariant check over a pure ledger: quiet on a sound one, and each invariant
names what breaks it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.settlement import check as C
from services.settlement import ledger as L
from services.settlement import postings as P


def sound() -> L.Ledger:
    ledger = L.Ledger(
        P.platform_accounts() + P.participant_accounts("s") + P.participant_accounts("c")
    )
    ledger.apply(
        P.deposit("d", "s", 10_000, "d") + P.hold("l1", "s", 4_000) + P.hold("l2", "s", 1_000)
    )
    ledger.apply(P.settle("x", "l1:hold", "c", 4_000, 400))
    return ledger


def broken(report: C.Report) -> dict[str, int]:
    return {name: n for name, n in report.counts.items() if n}


def test_a_sound_ledger_passes():
    report = C.check_ledger(sound())
    assert report.ok and report.accounts == 5 and report.transfers == 6
    assert "ok" in report.to_text()


def test_an_edited_balance_breaks_totals_and_the_sum_of_transfers():
    ledger = sound()
    ledger.accounts["cash:c"].credits_posted_fen += 1
    report = C.check_ledger(ledger)
    assert broken(report) == {C.DEBITS_EQUAL_CREDITS: 1, C.BALANCES_MATCH_TRANSFERS: 1}
    assert any(v.subject == "cash:c" for v in report.violations)


def test_a_participant_below_zero_is_reported():
    ledger = sound()
    ledger.accounts["cash:s"].debits_posted_fen += 10_000
    ledger.accounts["clearing"].credits_posted_fen += 10_000  # keeps the totals equal
    report = C.check_ledger(ledger)
    assert C.NO_NEGATIVE_BALANCE in broken(report)
    assert [v.subject for v in report.violations if v.invariant == C.NO_NEGATIVE_BALANCE] == [
        "cash:s"
    ]


def test_a_hold_resolved_twice_or_marked_without_resolution_is_reported():
    ledger = sound()
    ledger.transfers["again"] = ledger.transfers["x:post"]._replace(id="again")
    ledger.pending_states["l2:hold"] = L.POSTED
    report = C.check_ledger(ledger)
    assert broken(report).get(C.PENDING_RESOLVED_ONCE) == 2


def test_a_resolution_of_nothing_is_reported():
    ledger = sound()
    ledger.transfers["v"] = L.Transfer(
        "v", L.FREEZE_PENDING, "cash:s", "escrow", 5, pending_id="gone"
    )
    assert broken(C.check_ledger(ledger)) == {C.PENDING_RESOLVED_ONCE: 1}


def test_details_are_bounded_but_counts_are_not():
    report = C.Report(C.LEDGER_INVARIANTS)
    for n in range(C.DETAILS_MAX + 5):
        report.add(C.NO_NEGATIVE_BALANCE, f"a{n}", "x")
    assert report.counts[C.NO_NEGATIVE_BALANCE] == C.DETAILS_MAX + 5
    assert len(report.violations) == C.DETAILS_MAX
    assert report.to_dict()["violations_by_invariant"][C.NO_NEGATIVE_BALANCE] == C.DETAILS_MAX + 5


def test_the_gauge_shows_every_checked_invariant_zeros_included():
    registry = CollectorRegistry()
    ledger = sound()
    ledger.accounts["cash:c"].credits_posted_fen += 1
    C.publish(C.check_ledger(ledger), registry)
    value = lambda name: registry.get_sample_value(  # noqa: E731
        "wlex_settlement_invariant_violations", {"invariant": name}
    )
    assert value(C.BALANCES_MATCH_TRANSFERS) == 1
    assert value(C.NO_NEGATIVE_BALANCE) == 0
    C.publish(C.check_ledger(sound()), registry)
    assert value(C.BALANCES_MATCH_TRANSFERS) == 0
