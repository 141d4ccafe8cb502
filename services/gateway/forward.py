"""The one path of every participant command: claim the Idempotency-Key, send the
command to `commands` and wait for the ack, then record it and the answer together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi.responses import Response

from services.common import envelope, schemas
from services.gateway import idempotency
from services.gateway.deps import Call, CommandSink


@dataclass(frozen=True, slots=True)
class Recorded:
    """What an acknowledged command leaves behind: one data-modifying statement (the
    gateway's row of the load or offer; parameters $1..$n) and the answer."""

    sql: str
    args: tuple
    answer: idempotency.Answer


Record = Callable[[dict], Recorded]


async def forward(
    call: Call, fp: bytes, command: dict, record: Record, sink: CommandSink | None = None
) -> Response:
    """record(command) gives the statement that writes the gateway's row and the answer;
    it runs in the statement that marks the key done (one round trip, one commit). On a
    takeover `command` is the one the first attempt stored, not the one this request
    built. sink is where the event goes: `commands` unless told (shipment events go to
    `shipments`)."""
    deps = call.deps
    sink = sink or deps.commands
    # Ours to make, checked here: a command that fails its schema is a bug of the
    # gateway, and must not reach the engine (500, nothing recorded).
    schemas.validate(command)

    encoded = envelope.encode(command)

    async def perform(attempt: idempotency.Attempt) -> idempotency.Answer:
        # A new claim stores the very bytes encoded here; a takeover brings a crashed
        # attempt's bytes, which must be read back.
        stored = command if attempt.pending is encoded else envelope.decode(attempt.pending)
        await sink.send(attempt.pending, stored["key"])
        recorded = record(stored)
        await deps.idempotency.finish(
            deps.pool, attempt, recorded.answer, recorded.sql, recorded.args
        )
        return recorded.answer

    return await idempotency.run(
        deps.idempotency,
        call.caller.participant_id,
        call.idem_key,
        fp,
        encoded,
        perform,
    )
