"""Money: deposits and withdrawals (a simulated bank rail), the caller's balance and
statement.

A deposit or withdrawal is a command like a load: it passes the Idempotency-Key path,
goes to `commands` keyed by the participant, and settlement's funding gate applies it
to the ledger in order with that participant's other money commands (a withdrawal can
never overtake the deposit before it). The answer is 202; GET /v1/money/{id} and the
balance show the outcome. Balances and statements are read from settlement's ledger
through its read API (settlement_client.py), not from a copy.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from services.common import envelope, reasons
from services.gateway import bodies, idempotency, pages, problems
from services.gateway.deps import Call, Deps, authorized, documented
from services.gateway.forward import Recorded, forward
from services.gateway.models import FEN_MAX

SOURCE = "gateway"
MONEY_ROLES = ("shipper", "carrier", "insurer")
MoneyPost = Annotated[Call, Depends(authorized(*MONEY_ROLES, idempotent=True))]
MoneyGet = Annotated[Call, Depends(authorized(*MONEY_ROLES))]
router = APIRouter(tags=["money"])
RequestId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]


class MoneyRequest(BaseModel):
    """A deposit from, or a withdrawal to, the participant's bank account."""

    model_config = ConfigDict(extra="forbid", strict=True)
    amount_fen: Annotated[int, Field(gt=0, le=FEN_MAX, description="integer fen (CNY cents)")]
    bank_ref: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$"),
        Field(description="the bank rail's reference of the transfer; a reference moves money"
                          " once per participant and kind (sent again: duplicate_bank_ref)",
              examples=["ICBC-20261127-0001"]),
    ]  # fmt: skip


class MoneyAccepted(BaseModel):
    request_id: str
    kind: Literal["deposit", "withdrawal"]
    status: Literal["requested"]


class MoneyStatus(BaseModel):
    request_id: str
    kind: Literal["deposit", "withdrawal"]
    amount_fen: int
    bank_ref: str
    requested_at: int
    status: Literal["requested", "completed", "rejected"]
    reason: str | None = Field(
        None,
        description="why it was refused: insufficient_funds (a withdrawal), or"
        " duplicate_bank_ref (the caller's bank_ref already names a booked deposit or"
        " withdrawal of that kind: the money moved once, with the first request)",
    )


class Balance(BaseModel):
    participant_id: str
    available_fen: int = Field(description="what the participant may spend or withdraw")
    held_fen: int = Field(description="reserved by its loads' holds and disputed escrow")


class StatementLine(BaseModel):
    transfer_id: str
    kind: str
    code: str = Field(description="what it is for: deposit, withdrawal, hold, resize, payout, ...")
    cause: str = Field(description="the id of the event that caused it")
    side: Literal["debit", "credit"]
    amount_fen: int
    state: str | None = Field(description="of a hold: pending, frozen, posted or voided")
    at_ms: int


class Statement(BaseModel):
    items: list[StatementLine]
    next_cursor: str | None


MONEY_REQUEST = TypeAdapter(MoneyRequest)
# The gate's outcome words (services/settlement/gate.py) that mean the money moved.
_COMPLETED = frozenset({"deposited", "withdrawn"})


def _json(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _settlement(deps: Deps):
    if deps.settlement is None:
        raise problems.ProblemError(503, problems.UNAVAILABLE, "settlement is not configured",
                                    headers={"Retry-After": "1"})  # fmt: skip
    return deps.settlement


async def _post_money(request: Request, call: Call, kind: str) -> Response:
    deps, caller = call.deps, call.caller
    doc = await bodies.read_json(request, deps.config.body_bytes_max)
    req = bodies.parse(MONEY_REQUEST, doc)
    now = deps.clock_ms()
    ctype = "funds.deposit" if kind == "deposit" else "funds.withdraw"
    data = {"participant_id": caller.participant_id, "amount_fen": req.amount_fen,
            "bank_ref": req.bank_ref}  # fmt: skip
    # Keyed by the participant: its money commands reach the gate in the order sent.
    command = envelope.make(ctype, data, caller.participant_id, SOURCE, now)
    path = "/v1/deposits" if kind == "deposit" else "/v1/withdrawals"
    fp = idempotency.fingerprint("POST", path, doc)

    def record(cmd: dict) -> Recorded:
        d = cmd["data"]
        sql = (
            "INSERT INTO money_request (request_id, participant_id, kind, amount_fen, bank_ref,"
            " requested_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING"
        )
        args = (cmd["id"], d["participant_id"], kind, d["amount_fen"], d["bank_ref"], cmd["ts"])
        body = MoneyAccepted(request_id=cmd["id"], kind=kind, status="requested")
        headers = {"location": f"/v1/money/{cmd['id']}", "content-type": "application/json"}
        return Recorded(
            sql, args, idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        )

    return await forward(call, fp, command, record)


_POST_RESPONSES = {
    202: {"headers": {"Location": {"schema": {"type": "string"}}}},
    **problems.problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
}


@router.post(
    "/v1/deposits",
    status_code=202,
    response_model=MoneyAccepted,
    summary="Deposit money from the participant's bank",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True, body="MoneyRequest"),
)
async def post_deposit(request: Request, call: MoneyPost) -> Response:
    """Credits the participant's cash account once the funding gate has applied it
    (GET /v1/money/{request_id}; the balance shows it)."""
    return await _post_money(request, call, "deposit")


@router.post(
    "/v1/withdrawals",
    status_code=202,
    response_model=MoneyAccepted,
    summary="Withdraw available money to the participant's bank",
    responses=_POST_RESPONSES,
    openapi_extra=documented(idempotent=True, body="MoneyRequest"),
)
async def post_withdrawal(request: Request, call: MoneyPost) -> Response:
    """Pays out of the available balance only (never out of held money); refused when
    the balance does not cover it at the moment the gate applies it."""
    return await _post_money(request, call, "withdrawal")


@router.get(
    "/v1/money/{request_id}",
    response_model=MoneyStatus,
    summary="A deposit or withdrawal of the caller's",
    responses=problems.problem_responses(401, 403, 404, 422, 429, 503),
    openapi_extra=documented(),
)
async def get_money(request_id: RequestId, call: MoneyGet) -> Response:
    deps, caller = call.deps, call.caller
    row = await deps.pool.fetchrow(
        "SELECT request_id, kind, amount_fen, bank_ref, requested_ms FROM money_request"
        " WHERE request_id = $1 AND participant_id = $2",
        request_id, caller.participant_id,
    )  # fmt: skip
    if row is None:
        raise problems.ProblemError(
            404, problems.NOT_FOUND, f"no money request {request_id} of yours"
        )
    decided = await _settlement(deps).command_outcome(request_id)
    if decided is None:
        status, reason = "requested", None
    elif decided["outcome"] in _COMPLETED:
        status, reason = "completed", None
    else:
        status, reason = "rejected", decided["reason"]
    return _json({"request_id": row["request_id"], "kind": row["kind"],
                  "amount_fen": row["amount_fen"], "bank_ref": row["bank_ref"],
                  "requested_at": row["requested_ms"],
                  "status": status, "reason": reason})  # fmt: skip


@router.get(
    "/v1/account",
    response_model=Balance,
    summary="The caller's balance: available and held",
    responses=problems.problem_responses(401, 403, 429, 503),
    openapi_extra=documented(),
)
async def get_balance(call: MoneyGet) -> Response:
    b = await _settlement(call.deps).balance(call.caller.participant_id)
    return _json({"participant_id": b["participant_id"], "available_fen": b["available_fen"],
                  "held_fen": b["held_fen"]})  # fmt: skip


@router.get(
    "/v1/account/statement",
    response_model=Statement,
    summary="The caller's statement, oldest first",
    responses=problems.problem_responses(401, 403, 422, 429, 503),
    openapi_extra=documented(),
)
async def get_statement(
    call: MoneyGet,
    limit: Annotated[int, Query(ge=1, le=pages.LIMIT_MAX)] = pages.LIMIT_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    after_text = pages.decode_cursor(cursor)
    if after_text is not None and not after_text.isdigit():
        raise problems.ProblemError(422, reasons.INVALID, "cursor is not one we gave")
    page = await _settlement(call.deps).statement(
        call.caller.participant_id, int(after_text or 0), limit
    )
    items = [{k: line[k] for k in StatementLine.model_fields} for line in page["items"]]
    nxt = page["next_after"]
    return _json(
        {"items": items, "next_cursor": None if nxt is None else pages.encode_cursor(str(nxt))}
    )
