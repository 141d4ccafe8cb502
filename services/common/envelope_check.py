"""The fast path of the envelope check: plainly valid envelopes, without the schema.

schemas.validate_envelope (and so schemas.validate, every consumer's default check in
services.common.kafka.decode_batch) asks plainly_valid first and runs the generated
validator of schemas/envelope.schema.json only when it says False. Sound as long as what
passes here is a subset of what that schema accepts, field by field:

- a dict (exactly, not a subclass) with exactly the eight keys: `required` plus
  `additionalProperties: false`;
- id, source: str of 1..160 / 1..64 characters (len counts code points, as the schema's
  minLength/maxLength do);
- type: str of at most 64 characters, fullmatched by the schema's pattern (fullmatch also
  refuses the trailing newline that re.search's "$" lets through: stricter, so sound);
- v >= 1, ts >= 0: int exactly, so never bool or float ("integer" under
  schemas._StrictIntegerDraft07 is an int that is not a bool);
- key, cause: None or str of at most 256 / 160 characters;
- data: a dict (the envelope schema says only "object"; the per-type data schema is
  still checked by schemas.validate, whatever this says).

False says nothing: the schema decides, so every refusal, and its message, comes from
the schema. tests/unit/common/test_envelope_fast_path.py compares both paths on many
valid and hostile envelopes. The matching core's raw JSON path mirrors this check
(services/matching/native/src/json.rs): change both together.

Pure: imports nothing of the project, so services.common.schemas can import it.
"""

from __future__ import annotations

import re
from typing import Any

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
