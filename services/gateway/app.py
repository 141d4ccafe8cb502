"""The gateway's FastAPI app: create_app(deps) wires the routes, the problem answers,
the metrics and the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import reasons
from services.common.observability import HealthChecks
from services.common.observability import router as observability_router
from services.gateway import loads, money, offers, participants, problems, reference, shipments
from services.gateway import stream as stream_api
from services.gateway.bodies import ERRORS_MAX
from services.gateway.deps import SECURITY_SCHEME, Deps
from services.gateway.metrics import HttpMetrics
from services.gateway.models import LoadRequest, OfferRequest, ParticipantRequest
from services.gateway.ws_protocol import StreamWebSocketProtocol

log = logging.getLogger(__name__)

TITLE = "wlex gateway"
API_VERSION = "1.0.0"

# The house observes with Prometheus (metrics.py), not OpenTelemetry. FastAPI's native
# telemetry, on by default since 0.16x, looks up the global OTel providers on every
# request to learn that none is set (a few % of a POST's CPU); older FastAPI versions
# keep unknown keyword arguments in app.extra, so this is harmless there.
TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}

# Bodies read by hand (services.gateway.bodies), documented as components.
BODY_SCHEMAS: dict[str, Any] = {
    "LoadRequest": LoadRequest,
    "OfferRequest": OfferRequest,
    "ParticipantRequest": ParticipantRequest,
    "MoneyRequest": money.MoneyRequest,
    **shipments.BODY_SCHEMAS,
}

# Failures of our dependencies, not of the request: 503, retry with the same key.
_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.QueryCanceledError,
    ConnectionError,
    TimeoutError,
)


def create_app(deps: Deps | None, checks: HealthChecks | None = None) -> FastAPI:
    """The app. deps may be None while the service connects (answers 503); __main__
    sets app.state.deps when the pool and the producer are up."""
    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        description="The REST API of wlex, the open logistics trading exchange.",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        telemetry=TELEMETRY_OFF,
    )
    app.state.deps = deps
    # Read by services.common.http_server: the stream's frames are written many at once.
    app.ws_protocol = StreamWebSocketProtocol  # type: ignore[attr-defined]
    app.include_router(reference.router)
    app.include_router(loads.router)
    app.include_router(offers.router)
    app.include_router(participants.router)
    app.include_router(money.router)
    app.include_router(shipments.router)
    app.include_router(stream_api.router)
    if checks is not None:
        app.include_router(observability_router(checks))
    app.add_middleware(HttpMetrics)
    _handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(problems.ProblemError)
    async def on_problem(request: Request, exc: problems.ProblemError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        errors = [
            {"loc": [p if isinstance(p, int) else str(p) for p in e["loc"]], "msg": e["msg"]}
            for e in exc.errors()[:ERRORS_MAX]
        ]
        return problems.ProblemError(
            422, reasons.INVALID, "the request does not match the schema", errors=errors
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        word = {404: problems.NOT_FOUND, 405: problems.METHOD_NOT_ALLOWED}.get(
            exc.status_code, reasons.INVALID
        )
        return problems.ProblemError(
            exc.status_code, word, str(exc.detail), headers=dict(exc.headers or {})
        ).response()

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        if isinstance(exc, _UNAVAILABLE):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return problems.ProblemError(
                503, problems.UNAVAILABLE, "a dependency did not answer; retry",
                headers={"Retry-After": "1"},
            ).response()  # fmt: skip
        log.exception("%s %s failed", request.method, request.url.path)
        return problems.ProblemError(500, problems.INTERNAL, None).response()


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEME
    components = doc["components"].setdefault("schemas", {})
    for name, model in {**BODY_SCHEMAS, "Problem": problems.Problem}.items():
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    for path in doc["paths"].values():
        for op in path.values():
            # FastAPI documents its own 422 (HTTPValidationError) on routes with
            # parameters; ours are problem+json, listed by each route.
            resp = op.get("responses", {}).get("422")
            if resp and "application/json" in resp.get("content", {}):
                del resp["content"]["application/json"]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = doc
    return doc
