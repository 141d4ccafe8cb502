"""The service runner: one process, one uvloop event loop, one main coroutine.

A service's __main__ does

    from services.common.runner import run_service
    run_service(main, name="matching")

with `async def main(ctx: ServiceContext)`. The runner:
- logs to stderr, one line per record, at WLEX_LOG_LEVEL;
- serves /metrics and /healthz on settings.http_host:http_port (127.0.0.1 unless told);
- runs `main(ctx)`; /healthz fails ("starting") until main calls `ctx.mark_ready()`;
- on SIGTERM or SIGINT sets `ctx.stop` and /healthz turns to 503 ("stopping"). main is
  expected to see the event between batches, commit or abort the batch in flight, and
  return. After settings.shutdown_timeout_s main is cancelled; a second signal cancels it
  at once;
- then stops the HTTP server, runs the shutdown hooks (last registered first: pools
  close after the loops that use them) and exits with one of the EXIT_* codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from services.common import db
from services.common.http_server import HttpServer
from services.common.observability import HealthChecks
from services.common.observability import app as observability_app
from services.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

EXIT_OK = 0  # main returned, on its own or after a stop signal
EXIT_FAILED = 1  # main (or startup, or the HTTP server) raised
EXIT_ABORTED = 2  # main did not finish within shutdown_timeout_s and was cancelled

HOOK_TIMEOUT_S = 5.0  # one shutdown hook that hangs must not keep the process alive

ShutdownHook = Callable[[], Awaitable[None]]


class ServiceContext:
    """What the runner hands to a service's main coroutine."""

    def __init__(self, settings: Settings, checks: HealthChecks) -> None:
        self.settings = settings
        self.checks = checks
        self.stop = asyncio.Event()  # set on SIGTERM/SIGINT: finish the batch, then return
        self.http_port: int | None = None  # bound port once the endpoint serves
        self._ready = False
        self._hooks: list[tuple[str, ShutdownHook]] = []
        checks.add("main", self._main_check)

    def mark_ready(self) -> None:
        """main has started (caught up, connected): /healthz may say ok."""
        self._ready = True

    def on_shutdown(self, hook: ShutdownHook, name: str | None = None) -> None:
        """Run `hook` after main has ended; hooks run last registered first."""
        self._hooks.append((name or getattr(hook, "__qualname__", "hook"), hook))

    async def open_pool(
        self, schema: str | None = None, *, check_name: str = "postgres", **kwargs: Any
    ):
        """A PostgreSQL pool (db.create_pool) on settings.database_url: closed at
        shutdown after main has ended, and checked by /healthz as `check_name`."""
        pool = await db.create_pool(
            self.settings.database_url,
            schema=schema,
            application_name=self.settings.service_name,
            **kwargs,
        )
        self.on_shutdown(lambda: db.close_pool(pool), name="close postgres pool")

        async def select_1() -> None:
            await pool.fetchval("SELECT 1")

        self.checks.add(check_name, select_1)
        return pool

    async def sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if stop was requested meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()
        return self.stop.is_set()

    async def _main_check(self) -> None:
        if self.stop.is_set():
            raise RuntimeError("stopping")
        if not self._ready:
            raise RuntimeError("starting")


def instance_settings(service: str, argv: list[str] | None = None) -> dict[str, int]:
    """`python -m services.<service> [--instance I --of N]` as settings overrides
    (<service>_instance, <service>_instances): instance I of N owns the partitions p of
    its input topics with p % N == I (static assignment; every instance of a deployment
    is started with the same N)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("--instance", type=int, help="this instance's index, 0 <= I < N")
    parser.add_argument("--of", type=int, help="the number of instances N")
    args = parser.parse_args(argv)
    overrides = {}
    if args.instance is not None:
        overrides[f"{service}_instance"] = args.instance
    if args.of is not None:
        overrides[f"{service}_instances"] = args.of
    return overrides


# Every service allocates tens of thousands of short-lived containers a batch (decoded
# envelopes, records, rows); with CPython's default gen-0 threshold of 700 the cyclic
# collector then runs many times a batch, each pass also walking what survived. Measured
# on the settler: about 5 % of its time (docs/performance.md "Settlement ledger").
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect once, freeze what lives now (modules, settings: never garbage) out of every
    later collection, and collect young objects less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_service(main: Callable[[ServiceContext], Awaitable[None]], **kwargs: Any) -> None:
    """`run(main, ...)`, then exit the process with its code."""
    sys.exit(run(main, **kwargs))


def run(
    main: Callable[[ServiceContext], Awaitable[None]],
    *,
    name: str | None = None,
    settings: Settings | None = None,
    http_app: Callable[[ServiceContext], Any] | None = None,
    serve_http: bool = True,
    http_connections_max: int = 256,
) -> int:
    """Run `main` under uvloop until it returns or is stopped; return an EXIT_* code.

    `http_app(ctx)` builds the ASGI app to serve (the gateway's API, which includes
    services.common.observability.router); by default /metrics and /healthz only.
    Beyond http_connections_max open connections (WebSockets included) new requests
    get 503.
    """
    settings = settings or get_settings()
    if name is not None:
        settings = settings.model_copy(update={"service_name": name})
    setup_logging(settings)
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_supervise(main, settings, http_app, serve_http, http_connections_max))


async def _supervise(
    main, settings: Settings, http_app, serve_http: bool, http_connections_max: int = 256
) -> int:
    loop = asyncio.get_running_loop()
    ctx = ServiceContext(settings, HealthChecks())
    main_task: asyncio.Task | None = None
    signals_seen = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s: stopping (up to %.1fs)", sig.name, settings.shutdown_timeout_s)
            ctx.stop.set()
        else:
            log.warning("%s again: cancelling main now", sig.name)
            if main_task is not None:
                main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    http: HttpServer | None = None
    code = EXIT_OK
    try:
        if serve_http:
            app = http_app(ctx) if http_app else observability_app(ctx.checks)
            http = HttpServer(
                app, settings.http_host, settings.http_port, connections_max=http_connections_max
            )
            await http.start()
            ctx.http_port = http.port
        main_task = asyncio.create_task(main(ctx), name="main")
        code = await _await_main(ctx, main_task, http, settings.shutdown_timeout_s)
    except Exception:
        log.exception("startup failed")
        code = EXIT_FAILED
    finally:
        ctx.stop.set()
        if main_task is not None and not main_task.done():
            main_task.cancel()
            with contextlib.suppress(BaseException):
                await main_task
        if http is not None:
            await http.stop()
        await _run_hooks(ctx)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("exit %d", code)
    return code


async def _await_main(
    ctx: ServiceContext, main_task: asyncio.Task, http: HttpServer | None, timeout_s: float
) -> int:
    """Wait for main; after a stop request give it timeout_s before cancelling it."""
    stop_wait = asyncio.create_task(ctx.stop.wait(), name="stop-wait")
    watched = {main_task, stop_wait}
    if http is not None and http.task is not None:
        watched.add(http.task)
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()

    if not main_task.done():
        if not ctx.stop.is_set():  # the HTTP server ended on its own: not a healthy process
            log.error("HTTP server stopped unexpectedly; stopping main")
            ctx.stop.set()
        started = time.monotonic()
        done, _ = await asyncio.wait({main_task}, timeout=timeout_s)
        if not done:
            log.error("main did not finish within %.1fs; cancelling it", timeout_s)
            main_task.cancel()
            with contextlib.suppress(BaseException):
                await main_task
            return EXIT_ABORTED
        log.info("main finished %.2fs after stop", time.monotonic() - started)
        if http is not None and http.task is not None and http.task.done():
            return EXIT_FAILED

    if main_task.cancelled():  # a second signal cancelled it
        return EXIT_ABORTED
    exc = main_task.exception()
    if exc is not None:
        log.error("main failed", exc_info=exc)
        return EXIT_FAILED
    return EXIT_OK


async def _run_hooks(ctx: ServiceContext) -> None:
    for name, hook in reversed(ctx._hooks):
        try:
            async with asyncio.timeout(HOOK_TIMEOUT_S):
                await hook()
        except Exception:
            log.exception("shutdown hook %s failed", name)


class OneLineFormatter(logging.Formatter):
    """`time level service logger: message`, tracebacks folded into the same line, so
    that each record is one line for grep and for log shippers."""

    converter = time.gmtime  # UTC, like the events

    def __init__(self, service_name: str) -> None:
        super().__init__(
            fmt=f"%(asctime)s.%(msecs)03dZ %(levelname)s {service_name} %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


def setup_logging(settings: Settings) -> None:
    """Send every logger's records to stderr at settings.log_level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(settings.service_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx logs every request at INFO: one line per balance read between services.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
