"""Errors as problem details (RFC 9457), one stable type URI per reason word.

The type of a problem is https://wlex.dev/problems/<word>. Words the engine and the
funding gate use come from services.common.reasons (one name per idea across the
house); the words below are the gateway's own, about HTTP itself (authentication,
idempotency, limits), which no other service says.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.common import reasons

TYPE_BASE = "https://wlex.dev/problems/"
PROBLEM_JSON = "application/problem+json"

# Gateway-only problem words.
MALFORMED = "malformed"  # 400: the body is not a JSON document we can read
IDEMPOTENCY_KEY_MISSING = "idempotency_key_missing"  # 400: a POST without Idempotency-Key
IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"  # 400: not 1-255 visible ASCII characters
UNAUTHENTICATED = "unauthenticated"  # 401: no key, a wrong key, or a suspended participant
FORBIDDEN = "forbidden"  # 403: the participant's role may not do this
NOT_FOUND = "not_found"  # 404: no such resource (or not the caller's)
METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"  # 409: the first request is in flight
DEAL_STATE = "deal_state"  # 409: the deal's state does not allow this shipment action
PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # 422: same key, another payload
UNKNOWN_REGION = "unknown_region"  # 422: a lane names a region not in /v1/reference
OVER_CAPACITY = "over_capacity"  # 422: the load does not fit one vehicle of its class
RATE_LIMITED = "rate_limited"  # 429
UNAVAILABLE = "unavailable"  # 503: the broker or the database did not answer in time
INTERNAL = "internal"  # 500

TITLES: dict[str, str] = {
    reasons.INVALID: "The request is not valid",
    reasons.EXPIRED: "A time window of the request is already over",
    reasons.DUPLICATE_ID: "An order with this id is already live",
    reasons.UNKNOWN_ORDER: "No such order",
    reasons.NOT_OWNER: "The order belongs to another participant",
    MALFORMED: "The body is not a JSON document",
    IDEMPOTENCY_KEY_MISSING: "Idempotency-Key is required on every POST",
    IDEMPOTENCY_KEY_INVALID: "Idempotency-Key is not a valid key",
    UNAUTHENTICATED: "A valid API key is required",
    FORBIDDEN: "The participant's role may not do this",
    NOT_FOUND: "No such resource",
    METHOD_NOT_ALLOWED: "Method not allowed",
    IDEMPOTENCY_KEY_IN_USE: "A request with this Idempotency-Key is still in flight",
    DEAL_STATE: "The deal's state does not allow this action",
    PAYLOAD_TOO_LARGE: "The body is too large",
    UNSUPPORTED_MEDIA_TYPE: "The body must be application/json",
    IDEMPOTENCY_KEY_REUSED: "This Idempotency-Key was used with another request",
    UNKNOWN_REGION: "Unknown region code",
    OVER_CAPACITY: "The load does not fit one vehicle of its class",
    RATE_LIMITED: "Too many requests",
    UNAVAILABLE: "The exchange cannot take the request now",
    INTERNAL: "Internal error",
}


def type_uri(word: str) -> str:
    return TYPE_BASE + word


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, with `reason` (the bare word of `type`)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(examples=[TYPE_BASE + reasons.INVALID])
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    reason: str
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raised anywhere in a request; the app answers it as problem+json."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail or reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": type_uri(self.reason),
            "title": TITLES.get(self.reason, self.reason),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_JSON,
        )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem statuses a route can answer."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "Malformed body or missing Idempotency-Key",
    401: "No API key, a wrong key, or a suspended participant",
    403: "The participant's role may not do this",
    404: "No such resource, or not the caller's",
    409: "A request with this Idempotency-Key is still in flight",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Invalid request, or an Idempotency-Key reused with another payload",
    429: "Rate limit; see Retry-After",
    503: "Broker or database unavailable; retry with the same Idempotency-Key",
}
