"""The gateway: the REST API of wlex for shippers, carriers and operators (FastAPI).

Participant commands go to the `commands` topic; the gateway keeps participants, API
keys, idempotency keys and what it knows of each load and offer (docs/gateway.md).
"""
