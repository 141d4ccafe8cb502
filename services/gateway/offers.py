"""Carriers' capacity offers (车源): POST /v1/offers, GET /v1/offers/{id}, and cancel."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from services.common import reasons
from services.common.envelope import new_id
from services.gateway import bodies, commands, idempotency, problems
from services.gateway.deps import Call, DirectRoute, authorized, documented
from services.gateway.forward import Recorded, forward
from services.gateway.models import (
    OFFER_EXAMPLES,
    CancelAccepted,
    Offer,
    OfferAccepted,
    OfferRequest,
)
from services.gateway.reference import tables

CarrierPost = Annotated[Call, Depends(authorized("carrier", idempotent=True))]
CarrierGet = Annotated[Call, Depends(authorized("carrier"))]
router = APIRouter(tags=["offers"], route_class=DirectRoute)
OFFER_REQUEST = TypeAdapter(OfferRequest)
OfferId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
_ANSWER_HEADERS = {"content-type": "application/json"}


_INSERT_OFFER = (
    "INSERT INTO offer (offer_id, carrier_id, status, origin, destination, vehicle_class,"
    " command_id, data, requested_ms) VALUES ($1, $2, 'requested', $3, $4, $5, $6,"
    " $7::jsonb, $8) ON CONFLICT (offer_id) DO NOTHING"
)


def offer_row(cmd: dict) -> tuple[str, tuple]:
    """(sql, args) recording an offer.post command as a `requested` offer row: the one
    row POST /v1/offers and an offer on the stream both write, so GET /v1/offers/{id}
    and cancel work alike."""
    d = cmd["data"]
    lane = d["lane"]
    return _INSERT_OFFER, (
        d["offer_id"], d["carrier_id"], lane["origin"], lane["destination"],
        lane["vehicle_class"], cmd["id"], orjson.dumps(d).decode(), cmd["ts"],
    )  # fmt: skip


def _unknown(offer_id: str) -> problems.ProblemError:
    return problems.ProblemError(404, reasons.UNKNOWN_ORDER, f"no offer {offer_id} of yours")


@router.post(
    "/v1/offers",
    status_code=202,
    response_model=OfferAccepted,
    summary="Offer a truck on a lane",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problems.problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
    },
    openapi_extra=documented(idempotent=True, body="OfferRequest", examples=OFFER_EXAMPLES),
)
async def post_offer(request: Request, call: CarrierPost) -> Response:
    deps, caller = call.deps, call.caller
    doc = await bodies.read_json(request, deps.config.body_bytes_max)
    req = bodies.parse(OFFER_REQUEST, doc)
    now = deps.clock_ms()
    commands.check_offer(req, tables(), now)
    command = commands.offer_post(req, new_id(now), caller.participant_id, now)
    fp = idempotency.fingerprint("POST", "/v1/offers", doc)

    def record(cmd: dict) -> Recorded:
        d = cmd["data"]
        sql, args = offer_row(cmd)
        body = OfferAccepted(offer_id=d["offer_id"], command_id=cmd["id"])
        headers = dict(_ANSWER_HEADERS, location=f"/v1/offers/{d['offer_id']}")
        return Recorded(
            sql, args, idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        )

    return await forward(call, fp, command, record)


@router.get(
    "/v1/offers/{offer_id}",
    response_model=Offer,
    summary="One of the caller's offers",
    responses=problems.problem_responses(401, 403, 404, 422, 429),
    openapi_extra=documented(),
)
async def get_offer(offer_id: OfferId, call: CarrierGet) -> Response:
    deps, caller = call.deps, call.caller
    row = await deps.pool.fetchrow(
        "SELECT offer_id, carrier_id, status, data::text AS data, requested_ms,"
        " cancel_requested_ms, reject_reason, remaining_kg, remaining_dm3"
        " FROM offer WHERE offer_id = $1 AND carrier_id = $2",
        offer_id, caller.participant_id,
    )  # fmt: skip
    if row is None:
        raise _unknown(offer_id)
    d = orjson.loads(row["data"])
    view = {
        "offer_id": row["offer_id"],
        "carrier_id": row["carrier_id"],
        "status": row["status"],
        **{k: d[k] for k in ("lane", "capacity_kg", "capacity_dm3", "available_from",
                             "available_to", "ask_fen", "consolidate")},
        "requested_at": row["requested_ms"],
        "cancel_requested_at": row["cancel_requested_ms"],
        "reject_reason": row["reject_reason"],
        "remaining_kg": row["remaining_kg"],
        "remaining_dm3": row["remaining_dm3"],
    }  # fmt: skip
    return Response(orjson.dumps(view), media_type="application/json")


@router.post(
    "/v1/offers/{offer_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    summary="Cancel an offer",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problems.problem_responses(400, 401, 403, 404, 409, 422, 429, 503),
    },
    openapi_extra=documented(idempotent=True),
)
async def cancel_offer(offer_id: OfferId, call: CarrierPost) -> Response:
    deps, caller = call.deps, call.caller
    row = await deps.pool.fetchrow(
        "SELECT origin, destination, vehicle_class FROM offer WHERE offer_id = $1 AND carrier_id = $2",
        offer_id, caller.participant_id,
    )  # fmt: skip
    if row is None:
        raise _unknown(offer_id)
    now = deps.clock_ms()
    command = commands.offer_cancel(
        offer_id, caller.participant_id, commands.lane_key(dict(row)), now
    )
    fp = idempotency.fingerprint("POST", f"/v1/offers/{offer_id}/cancel", None)

    def record(cmd: dict) -> Recorded:
        sql = (
            "UPDATE offer SET cancel_command_id = COALESCE(cancel_command_id, $2),"
            " cancel_requested_ms = COALESCE(cancel_requested_ms, $3) WHERE offer_id = $1"
        )
        body = CancelAccepted(command_id=cmd["id"], cancel_requested_at=cmd["ts"])
        headers = dict(_ANSWER_HEADERS, location=f"/v1/offers/{offer_id}")
        answer = idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        return Recorded(sql, (offer_id, cmd["id"], cmd["ts"]), answer)

    return await forward(call, fp, command, record)
