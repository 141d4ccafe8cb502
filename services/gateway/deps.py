"""What a request handler needs, given by FastAPI dependency injection: the Deps of the
app (pool, command sink, stores) and the authenticated, rate-limited caller."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from services.common.metrics import KafkaMetrics
from services.gateway import idempotency, problems
from services.gateway.auth import Authenticator, Caller
from services.gateway.config import GatewayConfig
from services.gateway.loadlog import Waiters
from services.gateway.ratelimit import RateLimiter, retry_after_header
from services.gateway.settlement_client import SettlementClient

log = logging.getLogger(__name__)


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandSink:
    """Sends a command to `commands` and waits for the broker's acknowledgement.

    The producer is the house's (acks=all, idempotent: a retried send is not written
    twice). A command is answered 202 only once it is acknowledged; when the broker does
    not acknowledge within timeout_s the request fails with 503 and, because the wait
    cannot take back a send in flight, the same command may still land: the retry sends
    the same bytes again (see idempotency.py).

    The commands of concurrent requests go out together, like the statements of
    groupcommit.py: send() queues the command and waits; one flush at a time takes
    every command waiting, appends them to one BatchBuilder per partition (in arrival
    order, so the order per lane key is the order of send() calls) and waits for the
    acks of the whole group. Measured under bench_gateway, aiokafka's send() per
    command (an async call with its own metadata wait, Python murmur2 and accumulator
    append) and a timer per request cost more of the gateway's CPU than the append,
    and one group in flight makes fewer, larger produce requests for the broker.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        timeout_s: float,
        metrics: KafkaMetrics | None = None,
        *,
        group_max: int = 1024,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._group_max = group_max
        # The counter's child for this topic, looked up once rather than per command.
        self._produced = metrics.produced.labels(topic) if metrics is not None else None
        # (key, value, future, deadline) of the commands waiting for the next flush.
        self._waiting: list[tuple[bytes, bytes, asyncio.Future, float]] = []
        self._flush_task: asyncio.Task | None = None
        # key -> partition, as the producer's default partitioner places it (murmur2 of
        # the key over the topic's partitions); lane keys are few, the hash is Python.
        self._partitions: dict[bytes, int] = {}
        self._partition_count = 0
        self._partitioner = DefaultPartitioner()

    async def send(self, value: bytes, key: str) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((key.encode(), value, future, loop.time() + self.timeout_s))
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush(), name="command sink")
        try:
            # A caller that stops waiting cancels only its future: its command is sent
            # all the same, as if the caller had crashed after the send.
            await future
        except (TimeoutError, KafkaError) as exc:
            raise problems.ProblemError(
                503,
                problems.UNAVAILABLE,
                f"the broker did not acknowledge the command ({type(exc).__name__});"
                " retry with the same Idempotency-Key",
                headers={"Retry-After": "1"},
            ) from None

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._group_max]
                del self._waiting[: self._group_max]
                await self._send_group(group)
        finally:
            self._flush_task = None

    async def _send_group(self, group: list[tuple[bytes, bytes, asyncio.Future, float]]) -> None:
        # The earliest deadline of the group: no request waits longer than timeout_s.
        deadline = min(item[3] for item in group)
        try:
            async with asyncio.timeout_at(deadline):
                deliveries = await self._submit(group)
                await asyncio.gather(*deliveries)
        except (TimeoutError, KafkaError) as exc:
            for _, _, future, _ in group:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, KafkaError) else TimeoutError())
            return
        except Exception as exc:  # a bug here must fail the requests (500), not hang them
            log.exception("sending a group of %d commands failed", len(group))
            for _, _, future, _ in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, _, future, _ in group:
            if not future.done():
                future.set_result(None)
        if self._produced is not None:
            self._produced.inc(len(group))

    async def _submit(
        self, group: list[tuple[bytes, bytes, asyncio.Future, float]]
    ) -> list[asyncio.Future]:
        """Queues the group's records, one BatchBuilder per partition (more when one
        fills); returns the batches' delivery futures."""
        # Waits for the topic's metadata only when the producer has none yet.
        partitions = await self.producer.partitions_for(self.topic)
        if len(partitions) != self._partition_count:  # partitions were added: re-place
            self._partitions.clear()
            self._partition_count = len(partitions)
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value, _, _ in group:
            p = self._partitions.get(key)
            if p is None:
                p = self._place(key, partitions)
            records = by_partition.get(p)
            if records is None:
                by_partition[p] = records = []
            records.append((key, value))
        deliveries = []
        for partition, records in by_partition.items():
            builder = self.producer.create_batch()
            for key, value in records:
                if builder.append(key=key, value=value, timestamp=None) is None:
                    deliveries.append(
                        await self.producer.send_batch(builder, self.topic, partition=partition)
                    )
                    builder = self.producer.create_batch()
                    if builder.append(key=key, value=value, timestamp=None) is None:
                        raise MessageSizeTooLargeError(f"a command of {len(value)} bytes")
            if builder.record_count():
                deliveries.append(
                    await self.producer.send_batch(builder, self.topic, partition=partition)
                )
        return deliveries

    def _place(self, key: bytes, partitions: set[int]) -> int:
        if len(self._partitions) >= _PARTITION_CACHE_MAX:
            self._partitions.clear()
        p = self._partitioner(key, sorted(partitions), None)
        self._partitions[key] = p
        return p


_PARTITION_CACHE_MAX = 100_000


@dataclass
class Deps:
    pool: asyncpg.Pool
    commands: CommandSink
    config: GatewayConfig
    clock_ms: Callable[[], int] = clock_ms
    # Settlement's read API (balances, statements); None where settlement is not run.
    settlement: SettlementClient | None = None
    # Shipment events (pickups, deliveries, disputes, decisions) to `shipments`, keyed
    # by deal; the same producer as `commands`. None: shipment actions answer 503.
    shipments: CommandSink | None = None
    # Wakes the SSE streams of a load when this process's projector extends its log.
    load_log: Waiters = field(default_factory=Waiters)
    auth: Authenticator = field(init=False)
    limiter: RateLimiter = field(init=False)
    idempotency: idempotency.IdempotencyStore = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.auth = Authenticator(self.pool, c.auth_cache_s, c.auth_cache_max)
        self.limiter = RateLimiter(c.rate_per_s, c.rate_burst, c.rate_keys_max)
        self.idempotency = idempotency.IdempotencyStore(
            self.pool, c.idempotency_ttl_s, c.idempotency_lease_s
        )


def get_deps(request: Request) -> Deps:
    deps = request.app.state.deps
    if deps is None:  # the service is still connecting to PostgreSQL and Kafka
        raise problems.ProblemError(
            503, problems.UNAVAILABLE, "starting", headers={"Retry-After": "1"}
        )
    return deps


@dataclass(frozen=True, slots=True)
class Call:
    """One request's deps, authenticated caller and (on a POST) Idempotency-Key."""

    deps: Deps
    caller: Caller
    idem_key: str


def authorized(*roles: str, idempotent: bool = False) -> Callable:
    """The dependency of a route: 401 without a valid key, 429 above the key's rate,
    403 unless the caller has one of roles (any role when none is given), and on a POST
    400 without a valid Idempotency-Key, in this order.

    One flat dependency rather than a chain of small ones: FastAPI resolves each
    dependency at a measurable cost per request (a third of the gateway's CPU per POST
    with four chained ones). The OpenAPI document gets the scheme and the header from
    documented().
    """

    async def dependency(request: Request) -> Call:
        deps = get_deps(request)
        caller = await deps.auth.authenticate(request.headers.get("authorization"))
        wait_s = deps.limiter.take(caller.key_id)
        if wait_s > 0:
            raise problems.ProblemError(
                429,
                problems.RATE_LIMITED,
                f"at most {deps.config.rate_per_s:g} requests a second per key",
                headers={"Retry-After": retry_after_header(wait_s)},
            )
        if roles and caller.role not in roles:
            raise problems.ProblemError(
                403, problems.FORBIDDEN, f"a {caller.role} may not do this; needs {'/'.join(roles)}"
            )
        key = (
            idempotency.parse_header(request.headers.get(idempotency.HEADER)) if idempotent else ""
        )
        return Call(deps, caller, key)

    dependency.direct_call = True  # DirectRoute may call it itself
    return dependency


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint, when it takes nothing but the Request and one
    authorized() Call, is called directly: `endpoint(request, call=await dependency(request))`.

    The same checks in the same order, the same exception handlers, middleware and
    OpenAPI document (built from the same signature); what is skipped is FastAPI's
    per-request dependency solving (parameters, cookies, an exit stack), the largest
    single cost of a POST /v1/loads in the gateway's profile once its statements were
    grouped. Any other endpoint shape is served as APIRoute serves it. The endpoint must
    return a Response.
    """

    def get_route_handler(self) -> Callable:
        d = self.dependant
        sub = d.dependencies[0] if len(d.dependencies) == 1 else None
        if (
            sub is None
            or not getattr(sub.call, "direct_call", False)
            or d.request_param_name is None
            or any((d.path_params, d.query_params, d.header_params, d.cookie_params,
                    d.body_params, sub.dependencies))
            or d.response_param_name or d.background_tasks_param_name
        ):  # fmt: skip
            return super().get_route_handler()
        endpoint, dependency = self.endpoint, sub.call
        request_name, call_name = d.request_param_name, sub.name

        async def handler(request: Request) -> Response:
            call = await dependency(request)
            response = await endpoint(**{request_name: request, call_name: call})
            if not isinstance(response, Response):
                raise TypeError(f"{endpoint.__qualname__} must return a Response")
            return response

        return handler


SECURITY_SCHEME = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The participant's API key: `Authorization: Bearer wlx_...`",
    }
}


def documented(
    *, idempotent: bool = False, body: str | None = None, examples: dict | None = None
) -> dict:
    """openapi_extra of a route that uses authorized(): the security scheme, the
    Idempotency-Key header, and a body read by services.gateway.bodies."""
    extra: dict = {"security": [{"apiKey": []}]}
    if idempotent:
        extra["parameters"] = [
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": True,
                "description": "Required on every POST. A retry with the same key and body gets"
                " the first answer; the same key with another body gets 422.",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[!-~]+$",
                },
            }
        ]
    if body is not None:
        media: dict = {"schema": {"$ref": f"#/components/schemas/{body}"}}
        if examples:
            media["examples"] = examples
        extra["requestBody"] = {"required": True, "content": {"application/json": media}}
    return extra


DepsDep = Annotated[Deps, Depends(get_deps)]
