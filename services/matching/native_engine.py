"""The native matching engine: the Rust core (services/matching/native, module
`wlex_matching_native`) behind the Python engine's interface.

Same log in, same events out, byte for byte: `process_encoded` returns for each event
the (key, value) bytes that `(e["key"].encode(), orjson.dumps(e))` gives for the Python
engine's event, and `snapshot()` the same bytes as the Python engine's snapshot of the
same state, so either engine restores the other's snapshots. Its state lives in native
memory, out of the garbage collector's sight. A command string that is not valid
Unicode (a lone surrogate, which no JSON decoder produces) raises ValueError, as
encoding the Python engine's event would.

This module is an adapter of a compiled module and as pure as the engine: no clock, no
I/O. The reason words come from services/common/reasons.py, their one home.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import wlex_matching_native

from services.common.reasons import ENGINE_REJECT_PRECEDENCE
from services.matching.snapshot import FORMAT

# The core's Reason enum (engine.rs) is in precedence order, as this tuple is.
_REASONS = list(ENGINE_REJECT_PRECEDENCE)


class NativeEngine:
    """Matches commands of many lanes natively. Deterministic: same log in, same events
    out, identical to services.matching.engine.Engine."""

    __slots__ = ("_core",)

    def __init__(self) -> None:
        self._core = wlex_matching_native.Core(_REASONS)

    @property
    def now(self) -> int:
        """The engine's clock: the largest valid ts it has seen (epoch ms)."""
        return self._core.now

    def process_encoded(self, commands: list) -> list[tuple[bytes | None, bytes]]:
        """Handle `commands` (envelope dicts) in order; return (key, value) bytes of
        every outcome event in order, as the service writes them to Kafka."""
        return self._core.process_encoded(commands)

    def process_raw(
        self,
        values: list,
        fallback: Callable[[bytes | None, int], dict | None],
        counts: dict | None = None,
    ) -> list[tuple[bytes | None, bytes]]:
        """Handle Kafka record values (bytes, None for a null record) in order, as
        process_encoded handles their decoded, validated envelopes. A value the core's
        parser is sure of (a plainly valid envelope in strict JSON: native/src/json.rs)
        is read in place; for any other, `fallback(value, index in values)` gives the
        decoded, validated envelope, or None for a dead letter (skipped: the fallback
        records it). Same outputs as process_encoded([fallback(v, i) ...]) with the
        Nones left out, when fallback decodes and validates (test_native_raw.py).
        counts, if given (a dict), gets the number of events of each type added:
        cheaper than reading each type back from the bytes (engines.event_type)."""
        return self._core.process_raw(values, fallback, counts)

    def process(self, commands: list) -> list[dict]:
        """Handle `commands` in order; return every outcome envelope as a dict (the
        encoded events decoded: one code path, used by tests and tools)."""
        loads = orjson.loads
        return [loads(value) for _, value in self._core.process_encoded(commands)]

    def order_counts(self) -> tuple[int, int]:
        """(resting orders, open auctions), as Engine.order_counts."""
        return self._core.order_counts()

    def snapshot(self) -> bytes:
        """The whole state as deterministic bytes, identical to the Python engine's."""
        return self._core.snapshot()

    @classmethod
    def restore(cls, data: bytes) -> NativeEngine:
        """An engine in the state `snapshot()` (of either engine) captured."""
        state = orjson.loads(data)
        if state.get("format") != FORMAT:
            raise ValueError(f"unknown matching snapshot format {state.get('format')!r}")
        engine = cls()
        # The core takes rows as tuples (orjson gives lists); a bid list is the last
        # field of an auction row.
        engine._core.restore_state(
            state["now"],
            state["seq"],
            [tuple(row) for row in state["loads"]],
            [tuple(row) for row in state["offers"]],
            [(*row[:10], [tuple(bid) for bid in row[10]]) for row in state["auctions"]],
        )
        return engine
