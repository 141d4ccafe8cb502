"""HTTP metrics of the gateway, as a plain ASGI middleware (no per-request task or
body copy, unlike BaseHTTPMiddleware). Labels are bounded: the route template (never
an id), the method and the status code."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

_instances: dict[int, tuple[Counter, Histogram]] = {}


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    found = _instances.get(id(registry))
    if found is None:
        found = (
            Counter(
                "wlex_gateway_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                ["route", "method", "status"],
                registry=registry,
            ),
            Histogram(
                "wlex_gateway_http_request_seconds",
                "Time from request to the start of the answer, by route template.",
                ["route"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
        _instances[id(registry)] = found
    return found


class HttpMetrics:
    def __init__(self, app, registry: CollectorRegistry = REGISTRY) -> None:
        self.app = app
        self.requests, self.seconds = _metrics(registry)
        # (route, method, status) -> the labelled children: labels() costs a lock and a
        # tuple per call. Bounded like the labels: route templates x methods x statuses.
        self._children: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            children = self._children.get((route, method, status))
            if children is None:
                children = (
                    self.requests.labels(route, method, str(status)),
                    self.seconds.labels(route),
                )
                self._children[(route, method, status)] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
