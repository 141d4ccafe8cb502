"""API keys: made once, shown once, kept as a hash.

A key reads `wlx_<key_id>_<secret>`: key_id is 16 hex digits (64 random bits) that
find the row; secret is 32 random bytes in base64url. The table keeps sha256(secret)
only.

Why sha256 and not bcrypt or argon2: slow hashes exist to make guessing a *password*
expensive, because people choose passwords from a small space. A secret of 256 random
bits cannot be guessed at any hashing speed, so a slow hash would buy nothing and cost
every request ~50-100 ms of CPU (the gateway checks a key on each call). A stolen table
still gives no usable key: sha256 is not reversible, and the search space is 2**256.
Comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from services.gateway import problems

KEY_PREFIX = "wlx_"
_KEY = re.compile(r"^wlx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

ROLES = ("shipper", "carrier", "insurer", "operator")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated participant of a request."""

    participant_id: str
    role: str
    key_id: str


def new_key() -> tuple[str, str, bytes]:
    """(key_id, the full key to show once, sha256 of its secret to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 32 bytes -> 43 base64url characters
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", secret_sha256(secret)


def secret_sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    m = _KEY.match(token)
    return (m.group(1), m.group(2)) if m else None


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthenticated(detail: str, error: str | None = None) -> problems.ProblemError:
    # RFC 6750: a request without credentials gets the bare challenge; a bad token says so.
    challenge = 'Bearer realm="wlex"' + (f', error="{error}"' if error else "")
    return problems.ProblemError(
        401, problems.UNAUTHENTICATED, detail, headers={"WWW-Authenticate": challenge}
    )


class Authenticator:
    """Finds the caller of a key, with a small time-bounded cache of key rows.

    The cache keeps the row (participant, role, status, hash), never a verdict: the
    presented secret is hashed and compared on every request. A suspension made through
    this instance drops the participant's rows at once; one made through another
    instance takes effect within `cache_s`.
    """

    def __init__(self, pool: asyncpg.Pool, cache_s: float = 5.0, cache_max: int = 10_000) -> None:
        self._pool = pool
        self._cache_s = cache_s
        self._cache_max = cache_max
        self._rows: OrderedDict[str, tuple[float, str, str, str, bytes]] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if token is None:
            raise _unauthenticated("send Authorization: Bearer <api key>")
        parsed = parse_key(token)
        if parsed is None:
            raise _unauthenticated("the API key is not valid", "invalid_token")
        key_id, secret = parsed
        row = await self._row(key_id)
        if row is None or not hmac.compare_digest(row[4], secret_sha256(secret)):
            raise _unauthenticated("the API key is not valid", "invalid_token")
        _, participant_id, role, status, _ = row
        if status != "active":
            raise _unauthenticated("the participant is suspended", "invalid_token")
        return Caller(participant_id, role, key_id)

    async def _row(self, key_id: str) -> tuple[float, str, str, str, bytes] | None:
        now = time.monotonic()
        row = self._rows.get(key_id)
        if row is not None and now - row[0] < self._cache_s:
            return row
        record = await self._pool.fetchrow(
            "SELECT k.participant_id, p.role, p.status, k.secret_sha256"
            " FROM api_key k JOIN participant p USING (participant_id)"
            " WHERE k.key_id = $1 AND k.revoked_ms IS NULL",
            key_id,
        )
        if record is None:
            # Not cached: a wrong key must not push real ones out of the table.
            self._rows.pop(key_id, None)
            return None
        row = (now, record[0], record[1], record[2], bytes(record[3]))
        self._rows[key_id] = row
        self._rows.move_to_end(key_id)
        if len(self._rows) > self._cache_max:
            self._rows.popitem(last=False)
        return row

    def forget_participant(self, participant_id: str) -> None:
        for key_id in [k for k, row in self._rows.items() if row[1] == participant_id]:
            del self._rows[key_id]
