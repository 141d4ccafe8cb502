"""Cursor pagination: a page ends with an opaque cursor naming the last id it gave."""

from __future__ import annotations

import base64
import binascii

from services.common import reasons
from services.gateway import problems

LIMIT_DEFAULT = 20
LIMIT_MAX = 100


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise problems.ProblemError(422, reasons.INVALID, "cursor is not one we gave") from None
    if not (1 <= len(value) <= 128) or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise problems.ProblemError(422, reasons.INVALID, "cursor is not one we gave")
    return value


def next_cursor(ids: list[str], limit: int) -> str | None:
    """The cursor after a page fetched with limit + 1 rows, or None on the last page."""
    return encode_cursor(ids[limit - 1]) if len(ids) > limit else None
