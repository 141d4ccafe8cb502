"""The REST calls the simulated participants make beside the SDK's (deposits, cancels,
shipment actions, reads), with the retries any sensible client has: a dropped
connection, 429 (after Retry-After), 503 and 409 idempotency_key_in_use are tried again
with the same Idempotency-Key, so nothing is ever done twice. Bounded in attempts and
time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from services.sdk.shipper import ApiError

RETRY_STATUSES = frozenset({429, 503})
ATTEMPTS_MAX = 20
WAIT_S_MAX = 5.0


class Api:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 10.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            trust_env=False,  # the gateway is named explicitly; no proxy from the environment
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, params: dict[str, Any] | None = None) -> dict:
        return await self._call("GET", path, params=params)

    async def post(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        retry_reasons: frozenset[str] = frozenset(),
        patience_s: float = 30.0,
    ) -> dict:
        """POST with an Idempotency-Key (a new one when None, the same for every retry).
        retry_reasons: problem reasons that mean "not yet" (say, a deal the gateway's
        read model has not caught up with), tried again until patience_s ran out."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return await self._call("POST", path, json=body, headers=headers,
                                retry_reasons=retry_reasons, patience_s=patience_s)  # fmt: skip

    async def _call(
        self,
        method: str,
        path: str,
        *,
        retry_reasons: frozenset[str] = frozenset(),
        patience_s: float = 30.0,
        **kwargs: Any,
    ) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        for attempt in range(ATTEMPTS_MAX):
            last = attempt == ATTEMPTS_MAX - 1 or loop.time() >= deadline
            try:
                r = await self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
                await asyncio.sleep(min(WAIT_S_MAX, 0.1 * 2**attempt))
                continue
            if r.status_code < 400:
                return r.json() if r.content else {}
            problem = _problem(r)
            again = (
                r.status_code in RETRY_STATUSES
                or problem.get("reason") == "idempotency_key_in_use"
                or problem.get("reason") in retry_reasons
            )
            if not again or last:
                raise ApiError(r.status_code, problem)
            wait_s = _retry_after_s(r) or min(WAIT_S_MAX, 0.1 * 2**attempt)
            await asyncio.sleep(min(wait_s, max(0.05, deadline - loop.time())))
        raise AssertionError("unreachable")


def _problem(r: httpx.Response) -> dict[str, Any]:
    try:
        problem = r.json()
    except ValueError:
        return {"reason": "http", "detail": r.text[:200]}
    return problem if isinstance(problem, dict) else {"reason": "http"}


def _retry_after_s(r: httpx.Response) -> float | None:
    try:
        return min(WAIT_S_MAX, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
