"""Settlement's read API, served beside /metrics and /healthz on the service's own port
(loopback): the gateway answers GET /v1/account and its statement from here, so that
balances come from the ledger itself and never from a copy that may lag.

Internal: no authentication of its own. The gateway has authenticated the caller and
asks only for that caller's participant id; the port binds 127.0.0.1 (on Kubernetes a
NetworkPolicy admits the gateway alone)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from services.settlement import statement

router = APIRouter(prefix="/internal/v1", include_in_schema=False)
ParticipantId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]


def _pool(request: Request) -> asyncpg.Pool:
    pool = request.app.state.pool
    if pool is None:
        raise _Unavailable()
    return pool


class _Unavailable(Exception):
    pass


def _json(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


@router.get("/accounts/{participant_id}")
async def get_balance(participant_id: ParticipantId, request: Request) -> Response:
    """200 with the balances; 404 when the participant has no cash account yet."""
    doc = await statement.balance(_pool(request), participant_id)
    if doc is None:
        return _json({"participant_id": participant_id}, 404)
    return _json(doc)


@router.get("/accounts/{participant_id}/statement")
async def get_statement(
    participant_id: ParticipantId,
    request: Request,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=statement.LIMIT_MAX)] = 20,
) -> Response:
    """{items, next_after}: next_after is the seq to pass as `after` for the next page,
    null on the last one."""
    rows = await statement.lines(_pool(request), participant_id, after, limit)
    next_after = rows[limit - 1]["seq"] if len(rows) > limit else None
    return _json({"items": rows[:limit], "next_after": next_after})


@router.get("/commands/{command_id}")
async def get_command(command_id: Annotated[str, Path(min_length=1, max_length=128)],
                      request: Request) -> Response:  # fmt: skip
    """The gate's decision on a command: 200 {outcome, reason}, 404 while undecided."""
    doc = await statement.command_outcome(_pool(request), command_id)
    return _json(doc) if doc is not None else _json({"command_id": command_id}, 404)


def install(app) -> None:
    """Mount the router on the service's HTTP app; app.state.pool is set by main."""
    app.state.pool = None
    app.include_router(router)

    @app.exception_handler(_Unavailable)
    async def on_unavailable(request: Request, exc: _Unavailable):
        return Response(status_code=503, headers={"Retry-After": "1"})
