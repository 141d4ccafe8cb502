"""ShipperClient: post a load with an Idempotency-Key, read it, wait for its outcome.

    async with ShipperClient("http://127.0.0.1:18003", key) as s:
        accepted = await s.post_load(load)                 # {load_id, command_id, status}
        load = await s.wait_for_outcome(accepted["load_id"], timeout_s=30)

post_load retries a 409 (the first attempt still in flight), a 503 and a dropped
connection with the same Idempotency-Key, so a retry can never post a second load.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

# Statuses that are not yet an outcome: the exchange has not decided (requested), or an
# auction or resting load is still waiting for a carrier (open).
WAITING = frozenset({"requested", "open"})


class ApiError(Exception):
    """An error answer of the gateway; problem is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('reason')}: {problem.get('detail')}")
        self.status = status
        self.problem = problem
        self.reason = problem.get("reason")


class ShipperClient:
    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float = 10.0, retries_max: int = 5
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            trust_env=False,  # the gateway is named explicitly; no proxy from the environment
        )
        self._retries_max = retries_max

    async def __aenter__(self) -> ShipperClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def post_load(self, load: dict[str, Any], idempotency_key: str | None = None) -> dict:
        """POST /v1/loads: the 202 body. The same idempotency_key (a new one when None)
        is used for every retry."""
        key = idempotency_key or uuid.uuid4().hex
        for attempt in range(self._retries_max + 1):
            try:
                r = await self._http.post("/v1/loads", json=load, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                if attempt == self._retries_max:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            if r.status_code in (409, 503) and attempt < self._retries_max:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            return self._json(r)
        raise AssertionError("unreachable")

    async def get_load(self, load_id: str) -> dict:
        return self._json(await self._http.get(f"/v1/loads/{load_id}"))

    async def wait_for_outcome(
        self,
        load_id: str,
        *,
        timeout_s: float = 30.0,
        poll_s: float = 0.5,
        waiting: frozenset[str] = WAITING,
    ) -> dict:
        """Polls GET /v1/loads/{id} until its status is not in `waiting`; the load.
        TimeoutError after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            load = await self.get_load(load_id)
            if load["status"] not in waiting:
                return load
            if loop.time() + poll_s > deadline:
                raise TimeoutError(f"load {load_id} still {load['status']} after {timeout_s} s")
            await asyncio.sleep(poll_s)

    @staticmethod
    def _json(r: httpx.Response) -> dict:
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"reason": "http", "detail": r.text[:200]}
            raise ApiError(r.status_code, problem)
        return r.json()
