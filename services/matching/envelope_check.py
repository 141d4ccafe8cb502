"""A fast path in front of schemas.validate_envelope for the matching service's input.

validate_envelope costs ~30 us a message (a pathlib join for its cache key, then the
generated validator), more than the engine spends on the command itself. Here a direct
check accepts the envelopes that are plainly valid (the shape every gateway command and
clock tick has) and hands everything else to validate_envelope, which decides. Sound as
long as what passes here is a subset of what the schema accepts:
tests/unit/matching/test_envelope_check.py holds it to that.

The lead may want this in services.common.schemas for every consumer.
"""

from __future__ import annotations

import re
from typing import Any

from services.common import schemas

FIELDS = frozenset(("id", "type", "v", "ts", "key", "source", "cause", "data"))
_TYPE = re.compile(r"[a-z][a-z_]*(?:\.[a-z][a-z_]*)+")  # envelope.schema.json's pattern


def plainly_valid(e: Any) -> bool:
    """True only for envelopes the envelope schema accepts (False says nothing)."""
    if type(e) is not dict or len(e) != 8 or e.keys() != FIELDS:
        return False
    id_, type_, v, ts = e["id"], e["type"], e["v"], e["ts"]
    key, source, cause = e["key"], e["source"], e["cause"]
    return (
        type(id_) is str and 0 < len(id_) <= 160
        and type(type_) is str and len(type_) <= 64 and _TYPE.fullmatch(type_) is not None
        and type(v) is int and v >= 1
        and type(ts) is int and ts >= 0
        and (key is None or (type(key) is str and len(key) <= 256))
        and type(source) is str and 0 < len(source) <= 64
        and (cause is None or (type(cause) is str and len(cause) <= 160))
        and type(e["data"]) is dict
    )  # fmt: skip


def validate_envelope(envelope: Any) -> None:
    """schemas.validate_envelope, with the fast path first."""
    if not plainly_valid(envelope):
        schemas.validate_envelope(envelope)
