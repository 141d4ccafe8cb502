"""A deal's shipment: pickup, delivery with proof, disputes and operators' decisions
(POST /v1/deals/{deal_id}/...), and GET /v1/deals/{deal_id}.

Each action is checked against the deal's state in the read model (lifecycle.ACTION_FROM;
409 deal_state when it does not fit), then goes the way of every POST (Idempotency-Key,
record first, wait for the broker's ack: forward.py) to the `shipments` topic, keyed by
the deal, as shipment.picked_up, shipment.delivered, shipment.disputed or
dispute.decided. Settlement pays, freezes or refunds on them.

Who may act: the deal's carrier picks up and delivers; either party disputes; operators
decide. A role that may never do the action gets 403; a participant of the right role
who is not a party of the deal gets 404, as for another's load (ids are not disclosed).
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from services.common import envelope, reasons
from services.gateway import bodies, idempotency, problems
from services.gateway import lifecycle as lc
from services.gateway.deps import Call, authorized, documented
from services.gateway.forward import Recorded, forward
from services.gateway.models import Fen, Lane

SOURCE = "gateway"
router = APIRouter(tags=["deals"])
DealId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]

CarrierPost = Annotated[Call, Depends(authorized("carrier", idempotent=True))]
PartyPost = Annotated[Call, Depends(authorized("shipper", "carrier", idempotent=True))]
OperatorPost = Annotated[Call, Depends(authorized("operator", idempotent=True))]
Reader = Annotated[Call, Depends(authorized("shipper", "carrier", "operator"))]

# ---------------------------------------------------------------------------- bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DeliveredRequest(_Strict):
    proof_ref: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")
    ] = Field(description="reference of the proof of delivery (a signed POD's document id)")


class DisputeRequest(_Strict):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class DecisionRequest(_Strict):
    """release: the carrier is paid the price; refund: the shipper gets the hold back;
    split: the carrier is paid carrier_fen (above 0, below the price), the rest refunded."""

    resolution: Literal["release", "refund", "split"]
    carrier_fen: Fen | None = Field(None, description="split only")


class ShipmentAccepted(BaseModel):
    """The event is on the `shipments` topic; settlement acts on it."""

    status: Literal["requested"] = "requested"
    event_id: str
    type: str
    deal_id: str


class ShipmentFacts(BaseModel):
    picked_up_at: int | None
    delivered_at: int | None
    proof_ref: str | None


class DisputeFacts(BaseModel):
    disputed_at: int | None
    disputed_by: str | None
    reason: str | None
    decided_at: int | None
    decided_by: str | None
    resolution: Literal["release", "refund", "split"] | None
    carrier_fen: int | None


class SettlementFacts(BaseModel):
    settled_at: int | None
    how: str | None
    fee_fen: int | None
    payout_fen: int | None
    refund_fen: int | None
    premium_fen: int | None
    insurer_id: str | None
    frozen_fen: int | None
    refunded_at: int | None
    refunded_fen: int | None


DealStatus = Literal["dealt", "picked_up", "delivered", "disputed", "settled", "refunded"]


class DealView(BaseModel):
    deal_id: str
    load_id: str
    shipper_id: str
    carrier_id: str
    offer_id: str | None
    bid_id: str | None
    price_fen: int
    lane: Lane
    status: DealStatus = Field(description="the shipment's state (the load's status)")
    made_at: int
    shipment: ShipmentFacts
    dispute: DisputeFacts | None = Field(description="once disputed")
    settlement: SettlementFacts | None = Field(description="once escrow moved")


BODY_SCHEMAS = {
    "DeliveredRequest": DeliveredRequest,
    "DisputeRequest": DisputeRequest,
    "DecisionRequest": DecisionRequest,
}
DELIVERED = TypeAdapter(DeliveredRequest)
DISPUTE = TypeAdapter(DisputeRequest)
DECISION = TypeAdapter(DecisionRequest)

# ---------------------------------------------------------------------------- the deal

_DEAL = (
    "SELECT d.*, l.status, l.shipper_id AS load_shipper_id, (l.data->'lane')::text AS lane"
    " FROM deal d JOIN load l ON l.load_id = d.load_id"
    " WHERE d.deal_id = $1 AND d.made_ms IS NOT NULL AND d.carrier_id IS NOT NULL"
)


def _unknown(deal_id: str) -> problems.ProblemError:
    return problems.ProblemError(404, problems.NOT_FOUND, f"no deal {deal_id} of yours")


async def _deal_of(call: Call, deal_id: str, parties: tuple[str, ...]):
    """The deal's row if the caller is one of `parties` ("shipper", "carrier") of it or
    an operator; else 404."""
    row = await call.deps.pool.fetchrow(_DEAL, deal_id)
    if row is None:
        raise _unknown(deal_id)
    me = call.caller.participant_id
    if call.caller.role == "operator":
        return row
    if any(row[f"{party}_id"] == me for party in parties):
        return row
    if "shipper" in parties and row["load_shipper_id"] == me:
        return row
    raise _unknown(deal_id)


def _check_state(row, action: str) -> None:
    allowed = lc.ACTION_FROM[action]
    if row["status"] not in allowed:
        raise problems.ProblemError(
            409,
            problems.DEAL_STATE,
            f"the deal is {row['status']}; {action} needs {' or '.join(allowed)}",
        )
    if action == lc.DECISION and row["decided_ms"] is not None:
        raise problems.ProblemError(
            409, problems.DEAL_STATE, "the dispute is already decided; settlement follows"
        )


async def _replaying(call: Call, fp: bytes) -> bool:
    """True when this Idempotency-Key already carries this request: the state check is
    then skipped, so that a retry gets the first answer (or resends the first event)
    even though that first event has since moved the deal on."""
    return bool(
        await call.deps.pool.fetchval(
            "SELECT true FROM idempotency_key WHERE participant_id = $1 AND idem_key = $2"
            " AND fingerprint = $3 AND expires_at > now()",
            call.caller.participant_id,
            call.idem_key,
            fp,
        )  # fmt: skip
    )


async def _act(call: Call, deal_id: str, action: str, doc, parties, make_data) -> Response:
    """The common path of the four actions: find the deal, check the state (unless a
    retry), build the event, forward it to `shipments` and record its effect."""
    deps = call.deps
    if deps.shipments is None:
        raise problems.ProblemError(
            503,
            problems.UNAVAILABLE,
            "shipments are not accepted now",
            headers={"Retry-After": "1"},
        )
    row = await _deal_of(call, deal_id, parties)
    path = f"/v1/deals/{deal_id}/{action}"
    fp = idempotency.fingerprint("POST", path, doc)
    if not await _replaying(call, fp):
        _check_state(row, action)
    type_, data = make_data(row)
    now = deps.clock_ms()
    event = envelope.make(type_, data, deal_id, SOURCE, now)

    def record(ev: dict) -> Recorded:
        # What the gateway knows at once, so the next action sees it; the projector's
        # copy of the same event changes nothing more (statuses only move forward,
        # deal facts are written once).
        to = lc.ACTION_TO[action]
        if to is not None:
            sql = (
                "UPDATE load SET status = $2, status_ms = $3"
                " WHERE load_id = $1 AND status = ANY($4::text[])"
            )
            args: tuple = (ev["data"]["load_id"], to, ev["ts"], lc.replaceable_by(to))
        else:
            d = ev["data"]
            sql = (
                "UPDATE deal SET decided_ms = COALESCE(decided_ms, $2),"
                " decided_by = COALESCE(decided_by, $3), resolution = COALESCE(resolution, $4),"
                " carrier_fen = COALESCE(carrier_fen, $5) WHERE deal_id = $1"
            )
            args = (d["deal_id"], ev["ts"], d["operator_id"], d["resolution"], d["carrier_fen"])
        body = ShipmentAccepted(event_id=ev["id"], type=ev["type"], deal_id=deal_id)
        headers = {"location": f"/v1/deals/{deal_id}", "content-type": "application/json"}
        return Recorded(
            sql, args, idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        )

    return await forward(call, fp, event, record, sink=deps.shipments)


_POST_RESPONSES = {
    202: {"headers": {"Location": {"schema": {"type": "string"}}}},
    **problems.problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
}


@router.post(
    "/v1/deals/{deal_id}/pickup",
    status_code=202,
    response_model=ShipmentAccepted,
    summary="The carrier picked the load up",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True),
)
async def pickup(deal_id: DealId, call: CarrierPost) -> Response:
    """shipment.picked_up, by the deal's carrier, on a dealt deal. No body."""

    def data(row):
        return "shipment.picked_up", {
            "deal_id": deal_id, "load_id": row["load_id"], "carrier_id": row["carrier_id"],
        }  # fmt: skip

    return await _act(call, deal_id, lc.PICKUP, None, ("carrier",), data)


@router.post(
    "/v1/deals/{deal_id}/delivered",
    status_code=202,
    response_model=ShipmentAccepted,
    summary="The carrier delivered the load, with proof",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True, body="DeliveredRequest"),
)
async def delivered(deal_id: DealId, request: Request, call: CarrierPost) -> Response:
    """shipment.delivered, by the deal's carrier, after pickup; settlement pays out."""
    doc = await bodies.read_json(request, call.deps.config.body_bytes_max)
    req = bodies.parse(DELIVERED, doc)

    def data(row):
        return "shipment.delivered", {
            "deal_id": deal_id, "load_id": row["load_id"], "carrier_id": row["carrier_id"],
            "proof_ref": req.proof_ref,
        }  # fmt: skip

    return await _act(call, deal_id, lc.DELIVER, doc, ("carrier",), data)


@router.post(
    "/v1/deals/{deal_id}/dispute",
    status_code=202,
    response_model=ShipmentAccepted,
    summary="Dispute the deal (its shipper or carrier)",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True, body="DisputeRequest"),
)
async def dispute(deal_id: DealId, request: Request, call: PartyPost) -> Response:
    """shipment.disputed, by either party, until the deal is settled or refunded:
    settlement freezes the escrow until an operator decides."""
    doc = await bodies.read_json(request, call.deps.config.body_bytes_max)
    req = bodies.parse(DISPUTE, doc)
    me = call.caller.participant_id

    def data(row):
        return "shipment.disputed", {
            "deal_id": deal_id, "load_id": row["load_id"], "participant_id": me,
            "reason": req.reason,
        }  # fmt: skip

    return await _act(call, deal_id, lc.DISPUTE, doc, ("shipper", "carrier"), data)


@router.post(
    "/v1/deals/{deal_id}/decision",
    status_code=202,
    response_model=ShipmentAccepted,
    summary="Decide a disputed deal (operators)",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True, body="DecisionRequest"),
)
async def decision(deal_id: DealId, request: Request, call: OperatorPost) -> Response:
    """dispute.decided: release, refund or split, once per disputed deal."""
    doc = await bodies.read_json(request, call.deps.config.body_bytes_max)
    req = bodies.parse(DECISION, doc)
    me = call.caller.participant_id

    def data(row):
        if req.resolution == "split":
            if req.carrier_fen is None or req.carrier_fen >= row["price_fen"]:
                raise problems.ProblemError(
                    422, reasons.INVALID,
                    f"a split needs carrier_fen above 0 and below the price {row['price_fen']}",
                )  # fmt: skip
        elif req.carrier_fen is not None:
            raise problems.ProblemError(
                422, reasons.INVALID, f"carrier_fen is for a split, not a {req.resolution}"
            )
        return "dispute.decided", {
            "deal_id": deal_id, "load_id": row["load_id"], "operator_id": me,
            "resolution": req.resolution, "carrier_fen": req.carrier_fen,
        }  # fmt: skip

    return await _act(call, deal_id, lc.DECISION, doc, (), data)


@router.get(
    "/v1/deals/{deal_id}",
    response_model=DealView,
    summary="A deal and its shipment (its two parties and operators)",
    responses=problems.problem_responses(401, 403, 404, 422, 429),
    openapi_extra=documented(),
)
async def get_deal(deal_id: DealId, call: Reader) -> Response:
    row = await _deal_of(call, deal_id, ("shipper", "carrier"))
    return Response(orjson.dumps(view(row)), media_type="application/json")


def view(row) -> dict:
    disputed = row["disputed_ms"] is not None or row["decided_ms"] is not None
    moved = row["settled_ms"] is not None or row["refunded_ms"] is not None
    return {
        "deal_id": row["deal_id"],
        "load_id": row["load_id"],
        "shipper_id": row["shipper_id"] or row["load_shipper_id"],
        "carrier_id": row["carrier_id"],
        "offer_id": row["offer_id"],
        "bid_id": row["bid_id"],
        "price_fen": row["price_fen"],
        "lane": orjson.loads(row["lane"]),
        "status": row["status"],
        "made_at": row["made_ms"],
        "shipment": {
            "picked_up_at": row["picked_up_ms"],
            "delivered_at": row["delivered_ms"],
            "proof_ref": row["proof_ref"],
        },
        "dispute": {
            "disputed_at": row["disputed_ms"],
            "disputed_by": row["disputed_by"],
            "reason": row["dispute_reason"],
            "decided_at": row["decided_ms"],
            "decided_by": row["decided_by"],
            "resolution": row["resolution"],
            "carrier_fen": row["carrier_fen"],
        }
        if disputed
        else None,
        "settlement": {
            "settled_at": row["settled_ms"],
            "how": row["how"],
            "fee_fen": row["fee_fen"],
            "payout_fen": row["payout_fen"],
            "refund_fen": row["refund_fen"],
            "premium_fen": row["premium_fen"],
            "insurer_id": row["insurer_id"],
            "frozen_fen": row["frozen_fen"],
            "refunded_at": row["refunded_ms"],
            "refunded_fen": row["refunded_fen"],
        }
        if moved or row["frozen_fen"] is not None
        else None,
    }
