"""Operators register, suspend and list participants; everyone may read themselves."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from services.common.envelope import new_id
from services.gateway import bodies, idempotency, pages, problems, registry
from services.gateway.deps import Call, authorized, documented
from services.gateway.models import (
    Participant,
    ParticipantCreated,
    ParticipantPage,
    ParticipantRequest,
    Role,
)

OperatorPost = Annotated[Call, Depends(authorized("operator", idempotent=True))]
AnyGet = Annotated[Call, Depends(authorized())]
OperatorGet = Annotated[Call, Depends(authorized("operator"))]
router = APIRouter(tags=["participants"])
PARTICIPANT_REQUEST = TypeAdapter(ParticipantRequest)
ParticipantId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]


def _json(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _missing(participant_id: str) -> problems.ProblemError:
    return problems.ProblemError(404, problems.NOT_FOUND, f"no participant {participant_id}")


@router.post(
    "/v1/participants",
    status_code=201,
    response_model=ParticipantCreated,
    summary="Register a participant and issue its API key (operators)",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problems.problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
    },
    openapi_extra=documented(idempotent=True, body="ParticipantRequest"),
)
async def register(request: Request, call: OperatorPost) -> Response:
    """The key is in this answer only. A retry with the same Idempotency-Key gets the
    same participant with api_key null: the key is never stored in the clear, not even
    to replay it."""
    deps, caller, idem_key = call.deps, call.caller, call.idem_key
    doc = await bodies.read_json(request, deps.config.body_bytes_max)
    req = bodies.parse(PARTICIPANT_REQUEST, doc)
    now = deps.clock_ms()
    pending = orjson.dumps({"participant_id": new_id(now)})
    fp = idempotency.fingerprint("POST", "/v1/participants", doc)

    async def perform(attempt: idempotency.Attempt) -> idempotency.Answer:
        participant_id = orjson.loads(attempt.pending)["participant_id"]
        async with deps.pool.acquire() as conn, conn.transaction():
            participant, api_key = await registry.create(
                conn, req.role, req.name, now, participant_id
            )
            headers = {
                "location": f"/v1/participants/{participant_id}",
                "content-type": "application/json",
            }
            stored = idempotency.Answer(
                201, headers, orjson.dumps({"participant": participant, "api_key": None})
            )
            await deps.idempotency.finish(conn, attempt, stored)
        return idempotency.Answer(
            201, headers, orjson.dumps({"participant": participant, "api_key": api_key})
        )

    return await idempotency.run(
        deps.idempotency, caller.participant_id, idem_key, fp, pending, perform
    )


@router.get(
    "/v1/participants",
    response_model=ParticipantPage,
    summary="List participants in registration order (operators)",
    responses=problems.problem_responses(401, 403, 422, 429),
    openapi_extra=documented(),
)
async def list_participants(
    call: OperatorGet,
    role: Role | None = None,
    status: Annotated[str | None, Query(pattern="^(active|suspended)$")] = None,
    limit: Annotated[int, Query(ge=1, le=pages.LIMIT_MAX)] = pages.LIMIT_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    deps = call.deps
    rows = await registry.page(
        deps.pool, role=role, status=status, after=pages.decode_cursor(cursor), limit=limit
    )
    ids = [r["participant_id"] for r in rows]
    return _json({"items": rows[:limit], "next_cursor": pages.next_cursor(ids, limit)})


@router.get(
    "/v1/participants/{participant_id}",
    response_model=Participant,
    summary="One participant (operators)",
    responses=problems.problem_responses(401, 403, 404, 422, 429),
    openapi_extra=documented(),
)
async def get_participant(
    participant_id: ParticipantId,
    call: OperatorGet,
) -> Response:
    deps = call.deps
    participant = await registry.get(deps.pool, participant_id)
    if participant is None:
        raise _missing(participant_id)
    return _json(participant)


@router.post(
    "/v1/participants/{participant_id}/suspend",
    response_model=Participant,
    summary="Suspend a participant: its keys stop working (operators)",
    responses=problems.problem_responses(400, 401, 403, 404, 409, 422, 429, 503),
    openapi_extra=documented(idempotent=True),
)
async def suspend(participant_id: ParticipantId, call: OperatorPost) -> Response:
    deps, caller, idem_key = call.deps, call.caller, call.idem_key
    if await registry.get(deps.pool, participant_id) is None:
        raise _missing(participant_id)
    now = deps.clock_ms()
    fp = idempotency.fingerprint("POST", f"/v1/participants/{participant_id}/suspend", None)

    async def perform(attempt: idempotency.Attempt) -> idempotency.Answer:
        async with deps.pool.acquire() as conn, conn.transaction():
            participant = await registry.suspend(conn, participant_id, now)
            answer = idempotency.Answer(
                200, {"content-type": "application/json"}, orjson.dumps(participant)
            )
            await deps.idempotency.finish(conn, attempt, answer)
        deps.auth.forget_participant(participant_id)
        return answer

    return await idempotency.run(
        deps.idempotency, caller.participant_id, idem_key, fp, b"{}", perform
    )


@router.get(
    "/v1/me",
    response_model=Participant,
    summary="The caller's own participant",
    responses=problems.problem_responses(401, 429),
    openapi_extra=documented(),
)
async def me(call: AnyGet) -> Response:
    deps, caller = call.deps, call.caller
    return _json(await registry.get(deps.pool, caller.participant_id))
