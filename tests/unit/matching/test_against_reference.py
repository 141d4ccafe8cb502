"""The engine against the brute-force reference matcher: identical events for every
log Hypothesis can think of, including restarts from a snapshot in the middle."""

from __future__ import annotations

import orjson
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.matching.engine import Engine
from tests.unit.matching.logs import HypothesisDraw, LogWriter
from tests.unit.matching.reference import Reference


class EngineMatchesReference(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.engine = Engine()
        self.reference = Reference()
        self.writer = LogWriter()
        self.log = []  # every command sent so far, for the failure message

    @rule(data=st.data(), n=st.integers(1, 4))
    def send(self, data, n):
        d = HypothesisDraw(data)
        batch = [self.writer.command(d) for _ in range(n)]
        self.log.extend(batch)
        got = self.engine.process(batch)
        want = self.reference.process(batch)
        if got != want:
            lines = b"\n".join(orjson.dumps(c) for c in self.log).decode()
            raise AssertionError(
                f"engine != reference after this log:\n{lines}\nengine:    {got}\nreference: {want}"
            )
        assert orjson.dumps(got) == orjson.dumps(want)

    @rule()
    def restart_from_snapshot(self):
        blob = self.engine.snapshot()
        self.engine = Engine.restore(blob)
        assert self.engine.snapshot() == blob

    @invariant()
    def same_clock(self):
        assert self.engine.now == self.reference.now


EngineMatchesReference.TestCase.settings = settings(
    # Each example is a 40-step run, so half the profile's examples keeps this test the
    # size of the others (about 10 s of the suite's budget on two slow cores).
    max_examples=max(10, settings.default.max_examples // 2),
    stateful_step_count=40,
    # The explain phase re-runs failing cases with tracing; it adds nothing to a diff
    # of two event lists and has tripped over stateful rules before.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestEngineMatchesReference = EngineMatchesReference.TestCase
