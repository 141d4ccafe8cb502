"""Which matching engine a process runs: one factory for the service and recovery.

Two engines give identical events and snapshots (tests/unit/matching/
test_native_vs_python.py): `native`, the Rust core (native_engine.py, the default: it
is several times faster and keeps its book out of the garbage collector's sight), and
`python`, the reference (engine.py). Their snapshots are interchangeable, so switching
engines keeps every partition's state.
"""

from __future__ import annotations

from typing import Protocol

ENGINE_NAMES = ("native", "python")


class MatchingEngine(Protocol):
    """What the adapters use of an engine (both engines have exactly this)."""

    @property
    def now(self) -> int: ...

    def process(self, commands: list) -> list[dict]: ...

    def process_encoded(self, commands: list) -> list[tuple[bytes | None, bytes]]: ...

    def process_raw(
        self, values: list, fallback, counts: dict | None = None
    ) -> list[tuple[bytes | None, bytes]]: ...

    def snapshot(self) -> bytes: ...

    def order_counts(self) -> tuple[int, int]: ...


def engine_class(name: str):
    """The engine class called `name` ("native" or "python"): `cls()` is an empty
    engine, `cls.restore(blob)` one restored from either engine's snapshot."""
    if name == "native":
        # Imported on demand: the compiled module is needed only by who runs it.
        from services.matching.native_engine import NativeEngine

        return NativeEngine
    if name == "python":
        from services.matching.engine import Engine

        return Engine
    raise ValueError(f"unknown matching engine {name!r}: one of {ENGINE_NAMES}")


_TYPE_AT = b'","type":"'


def event_type(value: bytes) -> str:
    """The type of an encoded event, read from its bytes without decoding them: both
    engines write `{"id":"...","type":"...",...}`, and `","type":"` cannot occur inside
    the escaped id (every quote in a JSON string is written as \\")."""
    start = value.index(_TYPE_AT) + len(_TYPE_AT)
    return value[start : value.index(b'"', start)].decode()
