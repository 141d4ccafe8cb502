"""Reading a request body safely: bounded size, JSON only, bounded depth, strict models.

FastAPI's own body parsing is not used for POST bodies: it reads any size and parses
with the standard library, where a deeply nested document raises RecursionError (a 500)
and a 5000-digit number costs quadratic time. Here the body is read up to a limit,
parsed by orjson (64-bit numbers; larger ones become floats, which strict integer fields
refuse), and its depth is checked before a model sees it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from services.common import reasons
from services.gateway import problems

DEPTH_MAX = 8  # our documents nest 3 deep (load > auction > field)
ERRORS_MAX = 10


async def read_json(request: Request, bytes_max: int) -> Any:
    """The JSON document of the body; 413, 415 or 400 when it is not one we take."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise problems.ProblemError(
            415, problems.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json"
        )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > bytes_max):
        raise _too_large(bytes_max)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            raise _too_large(bytes_max)
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise problems.ProblemError(400, problems.MALFORMED, f"not JSON: {exc}"[:200]) from None
    # Each level opens a bracket, so a body with no more brackets than DEPTH_MAX (ours
    # have two or three) cannot nest deeper: the walk is only for the others.
    if body.count(b"{") + body.count(b"[") > DEPTH_MAX and _depth(doc) > DEPTH_MAX:
        raise problems.ProblemError(400, problems.MALFORMED, f"nested deeper than {DEPTH_MAX}")
    return doc


def _too_large(bytes_max: int) -> problems.ProblemError:
    return problems.ProblemError(
        413, problems.PAYLOAD_TOO_LARGE, f"bodies are limited to {bytes_max} bytes"
    )


def _depth(doc: Any) -> int:
    """Nesting depth, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth > deepest:
                deepest = depth
            if depth > DEPTH_MAX:
                return depth
            stack.extend((child, depth + 1) for child in node)
    return deepest


def parse(adapter: TypeAdapter, doc: Any):
    """The model of doc, or 422 invalid naming the fields at fault."""
    try:
        return adapter.validate_python(doc, strict=True)
    except ValidationError as exc:
        errors = [
            {"loc": [p if isinstance(p, int) else str(p) for p in e["loc"]], "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)[:ERRORS_MAX]
        ]
        raise problems.ProblemError(
            422, reasons.INVALID, "the body does not match the schema", errors=errors
        ) from None
