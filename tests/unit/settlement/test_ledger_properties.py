"""Hypothesis: any sequence of deposits, holds, posts, voids, freezes, withdrawals,
deliveries, re-sizes, retries and chains gives the results of the brute-force model,
keeps every invariant, and applies no transfer twice."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.settlement import ledger as L
from services.settlement.check import check_ledger
from services.settlement.postings import cash_account_id
from tests.unit.settlement.model import Model
from tests.unit.settlement.scenarios import Scenario, chart


class LedgerAgainstModel(RuleBasedStateMachine):
    @initialize(data=st.data())
    def open_books(self, data):
        self.ledger = L.Ledger(chart())
        self.model = Model(chart())
        self.scenario = Scenario(
            lambda lo, hi: data.draw(st.integers(lo, hi)),
            lambda p: self.ledger.accounts[cash_account_id(p)].available_fen,
        )
        self.history: list[tuple[list[L.Transfer], list[str]]] = []

    def _apply(self, batch: list[L.Transfer]) -> list[str]:
        results = self.ledger.apply(batch)
        assert results == self.model.apply(batch)
        assert len(results) == len(batch)
        return results

    @rule(data=st.data())
    def new_batch(self, data):
        self.scenario.draw = lambda lo, hi: data.draw(st.integers(lo, hi))
        batch = self.scenario.batch()
        self.history.append((batch, self._apply(batch)))

    @rule(data=st.data())
    def retry_batch(self, data):
        """The settler handed the same events again (a crash before its commit)."""
        if not self.history:
            return
        batch, first = self.history[data.draw(st.integers(0, len(self.history) - 1))]
        balances = {a.id: a.balances() for a in self.ledger.accounts.values()}
        transfers = len(self.ledger.transfers)
        again = self._apply(batch)
        for before, now in zip(first, again, strict=True):
            if before == L.OK:
                assert now == L.EXISTS
        if L.OK not in again:
            assert {a.id: a.balances() for a in self.ledger.accounts.values()} == balances
            assert len(self.ledger.transfers) == transfers

    @invariant()
    def balances_agree_with_the_model(self):
        if not hasattr(self, "ledger"):
            return
        for a in self.ledger.accounts.values():
            assert a.balances() == self.model.balances(a.id), a.id
        for pid, state in self.ledger.pending_states.items():
            assert state == self.model.state(pid), pid
        assert [t.id for t in self.model.log] == list(self.ledger.transfers)

    @invariant()
    def invariants_hold(self):
        if not hasattr(self, "ledger"):
            return
        report = check_ledger(self.ledger)
        assert report.ok, report.to_text()

    @invariant()
    def no_participant_below_zero(self):
        if not hasattr(self, "ledger"):
            return
        for a in self.ledger.accounts.values():
            if a.kind != L.CLEARING:
                assert a.available_fen >= 0, a


LedgerAgainstModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
TestLedgerAgainstModel = LedgerAgainstModel.TestCase
