"""The gateway's client of settlement's read API (services/settlement/read_api.py):
balances and statements come from the ledger itself, never from a copy that may lag."""

from __future__ import annotations

import httpx

from services.gateway import problems


class SettlementClient:
    def __init__(self, base_url: str, timeout_s: float = 2.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, params: dict | None = None) -> httpx.Response:
        try:
            r = await self.http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from None
        if r.status_code >= 500:
            raise _unavailable(f"settlement answered {r.status_code}")
        return r

    async def balance(self, participant_id: str) -> dict:
        """The participant's balances; zeros when it has no account yet (nothing deposited
        and nothing ever held: the gate opens the account at registration or deposit)."""
        r = await self._get(f"/internal/v1/accounts/{participant_id}")
        if r.status_code == 404:
            return {"participant_id": participant_id, "available_fen": 0, "held_fen": 0,
                    "incoming_fen": 0, "posted_credits_fen": 0, "posted_debits_fen": 0}  # fmt: skip
        return r.json()

    async def statement(self, participant_id: str, after: int, limit: int) -> dict:
        r = await self._get(
            f"/internal/v1/accounts/{participant_id}/statement",
            {"after": after, "limit": limit},
        )
        return r.json()

    async def command_outcome(self, command_id: str) -> dict | None:
        """The funding gate's decision on a command ({outcome, reason}), None while the
        gate has not decided it."""
        r = await self._get(f"/internal/v1/commands/{command_id}")
        return None if r.status_code == 404 else r.json()


def _unavailable(why) -> problems.ProblemError:
    return problems.ProblemError(
        503, problems.UNAVAILABLE, f"settlement did not answer ({why}); retry",
        headers={"Retry-After": "1"},
    )  # fmt: skip
