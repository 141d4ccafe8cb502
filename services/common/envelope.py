"""The one event envelope of wlex and its JSON codec.

An envelope is a plain dict with exactly these keys (DESIGN "Events"):

    id      str        unique; ids made by new_id() sort in time order
    type    str        "load.post" (commands, imperative) or "deal.made" (outcomes, past)
    v       int        schema version of `data`
    ts      int        UTC epoch milliseconds
    key     str|None   the partition key (a lane key for orders and market)
    source  str        the service that wrote it
    cause   str|None   id of the message that caused this one
    data    dict       the type's payload, described by schemas/events/<type>.schema.json

Plain dicts, not classes: the matching engine reads and writes hundreds of thousands of
these a second, and a dict is what orjson gives and takes without a copy.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

FIELDS: tuple[str, ...] = ("id", "type", "v", "ts", "key", "source", "cause", "data")

_RAND_BITS = 74  # UUIDv7: 12 bits rand_a + 62 bits rand_b
_RAND_MAX = (1 << _RAND_BITS) - 1


class DecodeError(ValueError):
    """Bytes that are not a JSON object."""


class IdClock:
    """Monotonic UUIDv7 generator (RFC 9562, method 2: the random part is a counter
    within a millisecond).

    Ids from one process are strictly increasing even when many are made in the same
    millisecond or the caller's clock steps back: a step back reuses the last
    millisecond. Ids from different processes order by millisecond only.
    """

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0

    def next(self, ts_ms: int) -> str:
        if not 0 <= ts_ms < 1 << 48:
            raise ValueError(f"ts_ms out of range: {ts_ms!r}")
        if ts_ms > self._last_ms:
            # Top bit clear leaves 2**73 increments of headroom within a millisecond.
            rand = int.from_bytes(os.urandom(10), "big") & (_RAND_MAX >> 1)
            self._last_ms = ts_ms
        else:
            rand = self._last_rand + 1
            if rand > _RAND_MAX:  # unreachable in practice; move to the next ms
                self._last_ms += 1
                rand = 0
        self._last_rand = rand
        ms = self._last_ms
        rand_a = rand >> 62
        rand_b = rand & ((1 << 62) - 1)
        value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ids = IdClock()


def new_id(ts_ms: int) -> str:
    """A UUIDv7 string for an event made at ts_ms.

    Lowercase hex of fixed width, so string order is time order: within this process
    every id is greater than the one before it. The time comes from the caller (only
    adapters read clocks); the randomness from os.urandom.
    """
    return _ids.next(ts_ms)


def id_ts_ms(event_id: str) -> int:
    """The millisecond timestamp inside a new_id() id."""
    return int(event_id[:8] + event_id[9:13], 16)


def make(
    type: str,
    data: dict[str, Any],
    key: str | None,
    source: str,
    ts_ms: int,
    cause: str | None = None,
    v: int = 1,
    id: str | None = None,
) -> dict[str, Any]:
    """A new envelope dict; id defaults to new_id(ts_ms). Does not validate."""
    return {
        "id": id if id is not None else new_id(ts_ms),
        "type": type,
        "v": v,
        "ts": ts_ms,
        "key": key,
        "source": source,
        "cause": cause,
        "data": data,
    }


def encode(envelope: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Key order is the dict's, so equal dicts built the same way
    give byte-identical output (the engine's replay contract rests on it)."""
    return orjson.dumps(envelope)


def decode(raw: bytes | bytearray | memoryview | None) -> dict[str, Any]:
    """The dict in raw. Raises DecodeError when raw is missing, not JSON, or not a JSON
    object; says nothing about the envelope's fields (that is schemas.validate)."""
    if raw is None:
        raise DecodeError("no value (null record)")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"not a JSON object but {type(value).__name__}")
    return value
