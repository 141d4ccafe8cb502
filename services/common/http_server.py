"""An ASGI app served by uvicorn inside the service's own event loop.

Contract: `HttpServer(app, host, port)`; `await start()` binds the socket (raising OSError
at once if the port is taken) and serves in a background task; `port` is then the bound
port (useful with port 0); `await stop()` closes the listener, lets requests in flight
finish for a bounded time, and returns. Signals are left to the caller (services.common.
runner): uvicorn must not take SIGTERM/SIGINT from the process that embeds it.

Why uvicorn and not granian: the service loop (Kafka consumer, outbox relay) and the
endpoint share one asyncio loop, so /healthz reads that loop's state directly and no
thread or process boundary sits in between. uvicorn.Server.serve() is a coroutine made
for this. granian 2.x can do it too (granian.server.embed.Server), but that mode is marked
experimental and logs so at every start; measured in-loop under uvloop on this app, both
serve the same (~3.2k /healthz per s, same loop lag), because FastAPI, not the server,
is the cost. Nothing is gained for the risk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    # uvicorn.Server.serve() replaces the process's SIGINT/SIGTERM handlers with its own
    # and re-raises the signal when it stops: the runner owns signals, so do neither.
    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


class HttpServer:
    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        graceful_timeout_s: float = 2.0,
        connections_max: int = 256,
        ws_protocol: type | None = None,
    ) -> None:
        self.host = host
        # A uvicorn WebSocket protocol class; None: the app's own `ws_protocol` attribute
        # if it has one (the runner passes apps, not server options: the gateway's stream
        # brings a protocol that writes many frames at once), else uvicorn's default.
        ws_protocol = ws_protocol or getattr(app, "ws_protocol", None)
        self.port = port
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            # The runner configured logging already; uvicorn's default dictConfig would
            # replace it.
            log_config=None,
            access_log=False,  # Prometheus scrapes every few seconds: no line per scrape
            limit_concurrency=connections_max,  # beyond it uvicorn answers 503
            timeout_graceful_shutdown=graceful_timeout_s,
            timeout_keep_alive=5,
            server_header=False,
            # A WebSocket fan-out sends one event to many sockets: per-message deflate
            # would compress it once per socket (the gateway's stream frames are small
            # JSON, and CPU is what the fan-out is short of).
            ws_per_message_deflate=False,
            ws=ws_protocol or "auto",
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # We bind the socket ourselves: uvicorn's own bind failure calls sys.exit() inside
        # a task, which would tear down the whole loop instead of raising here.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(False)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        log.info("serving http://%s:%d (/metrics, /healthz)", self.host, self.port)

    @property
    def task(self) -> asyncio.Task | None:
        """The serving task; done means the server stopped (or failed)."""
        return self._task

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            # serve() wakes every 0.1 s to look at should_exit, then waits at most
            # graceful_timeout_s for requests in flight.
            async with asyncio.timeout(self._config.timeout_graceful_shutdown + 2.0):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            log.exception("HTTP server failed while stopping")
        self._task = None
