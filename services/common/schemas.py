"""JSON Schema validation of envelopes, from the files in schemas/.

schemas/envelope.schema.json describes the envelope; schemas/events/<type>.schema.json
describes the `data` of each type. Files are read and compiled once per process, on
first use of a type; compiled validators are cached.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fastjsonschema
import orjson
from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft07 import CodeGeneratorDraft07
from fastjsonschema.ref_resolver import RefResolver

from services.common.envelope_check import plainly_valid

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
EVENTS_DIR = SCHEMAS_DIR / "events"
_SUFFIX = ".schema.json"


class ValidationError(ValueError):
    """An envelope that does not match its schema. str() says which field and why."""


def known_types() -> list[str]:
    """Every type with a data schema in schemas/events, sorted."""
    return sorted(p.name[: -len(_SUFFIX)] for p in EVENTS_DIR.glob("*" + _SUFFIX))


def schema_path(type_: str) -> Path:
    """The file of the data schema of type_ (it may not exist)."""
    return EVENTS_DIR / f"{type_}{_SUFFIX}"


@cache
def _load(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _file_handler(uri: str) -> dict[str, Any]:
    # Relative $refs ("../defs.schema.json#/...") resolve against each schema's file://
    # $id; this reads them from disk through the same cache instead of urllib.
    return _load(Path(unquote(urlsplit(uri).path)))


class _StrictIntegerDraft07(CodeGeneratorDraft07):
    """Draft-07, except that "integer" means a JSON number written without a fraction.

    Draft-06 on counts 100.0 as an integer. Money and sizes are integers and never
    floats (DESIGN): a 100.0 accepted here would flow through the engine as a float
    and come out as "100.0", breaking the byte-identical replay. Draft-04's type check
    (a Python int, not bool) is the one we want.
    """

    generate_type = CodeGeneratorDraft04.generate_type


@cache
def _compile(path: Path):
    schema = dict(_load(path))
    # Given at load time rather than written in the files, so the files keep plain
    # relative $refs that AsyncAPI tools and editors resolve by file location.
    schema["$id"] = path.as_uri()
    # What fastjsonschema.compile does, with our generator class in place of the one it
    # would pick from "$schema".
    resolver = RefResolver.from_schema(schema, handlers={"file": _file_handler}, store={})
    generator = _StrictIntegerDraft07(schema, resolver=resolver)
    scope = generator.global_state
    exec(generator.func_code, scope)
    return scope[resolver.get_scope_name()]


@cache
def _data_validator(type_: str):
    path = schema_path(type_)
    if not path.is_file():
        return None
    return _compile(path)


def validate_envelope(envelope: Any, *, fast: bool = True) -> None:
    """Checks the envelope fields only (not `data` against its type).

    For consumers that must answer bad or unknown commands themselves, like the
    matching engine, which rejects them with order.rejected rather than dead-letters.
    fast=True (every caller) first asks envelope_check.plainly_valid, which accepts only
    what the schema accepts; anything else, every refusal and its message included, is
    the schema's decision. fast=False runs the schema alone (the reference, for tests).
    """
    if fast and plainly_valid(envelope):
        return
    try:
        _envelope_validator()(envelope)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValidationError(_describe(exc, "envelope")) from None


@cache
def _envelope_validator():
    # Looked up once: a Path built and hashed per call cost 1-3 % of a gateway POST.
    return _compile(SCHEMAS_DIR / "envelope.schema.json")


def validate(envelope: Any, *, fast: bool = True) -> None:
    """Checks the envelope and its `data` against the schema of its type.

    Raises ValidationError naming the type and the failing field; a type without a
    schema in schemas/events is invalid. Only the envelope part has a fast path
    (validate_envelope); `data` always goes through the generated validator of its type.
    """
    validate_envelope(envelope, fast=fast)
    type_ = envelope["type"]
    validator = _data_validator(type_)
    if validator is None:
        raise ValidationError(f"{type_}: unknown type (no schema in schemas/events)")
    try:
        validator(envelope["data"])
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValidationError(f"{type_} v{envelope['v']}: {_describe(exc, 'data')}") from None


def _describe(exc: fastjsonschema.JsonSchemaValueException, root: str) -> str:
    # fastjsonschema calls the root of whatever it validated "data" ("data.v must be
    # integer"); name it for what it is, so "envelope.v" and "data.price_fen" read right.
    message = exc.message
    if message.startswith("data"):
        message = root + message[len("data") :]
    return message
