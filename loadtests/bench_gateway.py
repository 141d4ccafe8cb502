"""Benchmark of the gateway: `python -m loadtests.bench_gateway`.

POST /v1/loads with 64 concurrent clients for 30 s against `python -m services.gateway`
(the real thing: PostgreSQL for keys and idempotency, Kafka acks=all before each 202),
and in the same run the ceiling: a bare FastAPI endpoint that reads the same JSON body
and answers 202, served the same way (services.common.runner, the same HttpServer and
uvicorn settings, one process, uvloop). ratio = post_loads_rps / bare_rps.

Each client keeps one HTTP/1.1 connection and sends the next request when the answer
came (closed loop); every POST is a new load with its own Idempotency-Key, from one of
64 shippers (one per client, so the per-key rate limit is raised for the run, not
removed). The clients run in a separate process with a minimal hand-written HTTP/1.1
client on uvloop, so that the measuring side costs as little CPU as possible: on the
2-core reference machine the clients, the gateway, PostgreSQL and Kafka share the cores.

The fan-out part (`--ws-carriers`, 1,000 by default; `--ws-only` skips the POST part):
that many carriers hold a WebSocket each on /v1/stream, each subscribed to one of
`--ws-lanes` lanes; `--ws-rate` market events a second (bids on open auctions, and
every 20th a market load coming to rest) are produced into `market` for
`--ws-duration` seconds, after `--ws-warmup` seconds of the same traffic, in one
stream, that are not measured. The loads they are about are in the gateway's tables
first, as POST would have left them, so the read-model projector applies each event as
it would in a real market; and each client records the delay from the event's
envelope ts (set when its 10 ms step is produced, without linger) to its receipt, for
the events whose ts falls in the measured part. ws_p99_ms is the 99th percentile of
those delays over every delivery; ws_deliveries_per_s is what the gateway wrote to
sockets (events x subscribers of their lane). The target is the gateway's delivery latency, so the
measuring side must not be the bottleneck: the carriers are raw sockets on uvloop
(`--ws-procs` processes, 2 by default, each holding its share of the connections), the
upgrade written by hand and each frame parsed only as far as the event's ts, with no
JSON decode and no task per connection; the producer queues each step as one batch per
partition. The result gives the CPU of the clients, of the producer and (a stack of
this run) of PostgreSQL and Kafka beside the gateway's, and the gateway's own histogram
of the delay from ts to its fan-out (hub_lag_ms_at_most), which tells the gateway's
share of the delay from the sockets'.

`--projector` runs only the read-model projector (Projector.apply, no Kafka, no HTTP)
on bursts of auction.opened and bid.accepted, with their loads in the table and without
(every event parked, as in fan-out runs before 2026-11-28 12:00), and prints events/s,
CPU per event and statements per batch; it writes no result file.

Uses WLEX_KAFKA_BOOTSTRAP / WLEX_DATABASE_URL when set, else starts a local stack in a
temporary directory. Writes loadtests/results/bench_gateway.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
from fastapi import FastAPI, Request
from fastapi.responses import Response

from loadtests.report import commit, machine

RESULTS = Path(__file__).parent / "results" / "bench_gateway.json"
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"post_loads_rps": (">=", 3000), "ratio": (">=", 0.4)}
HOUR_MS = 3_600_000


# ---------------------------------------------------------------------------- the ceiling


def serve_bare() -> None:
    """The bare endpoint: FastAPI, one POST that reads a JSON body and answers 202."""
    from services.common import observability
    from services.common.runner import run_service
    from services.gateway.app import TELEMETRY_OFF

    app = FastAPI(telemetry=TELEMETRY_OFF)  # configured as the gateway's app

    @app.post("/v1/loads", status_code=202)
    async def post(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        return Response(
            orjson.dumps({"load_id": str(len(doc)), "status": "requested"}),
            status_code=202,
            media_type="application/json",
        )

    async def main(ctx) -> None:
        ctx.mark_ready()
        await ctx.stop.wait()

    def http_app(ctx):
        app.include_router(observability.router(ctx.checks))  # /healthz, as the gateway
        return app

    run_service(main, name="bench_bare", http_app=http_app)


# ---------------------------------------------------------------------------- the clients


def _body() -> bytes:
    t = time.time_ns() // 1_000_000
    return orjson.dumps(
        {
            "mode": "market",
            "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
            "weight_kg": 12000,
            "volume_dm3": 30000,
            "cargo_category": "building-materials",
            "pickup_from": t + HOUR_MS,
            "pickup_to": t + 5 * HOUR_MS,
            "limit_fen": 350000,
        }
    )


async def _client(port: int, key: str, deadline: float, stats: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = _body()
    prefix = (
        f"POST /v1/loads HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    run = uuid.uuid4().hex[:12]
    n = 0
    try:
        while loop.time() < deadline:
            n += 1
            started = loop.time()
            writer.write(prefix + f"Idempotency-Key: {run}-{n}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            stats["latencies"].append(loop.time() - started)
            stats["status"][status] = stats["status"].get(status, 0) + 1
    finally:
        writer.close()


async def _drive(port: int, keys: list[str], duration_s: float, warmup_s: float) -> dict:
    """warmup_s of traffic, then "warm" on stdout (the parent starts counting CPU), then
    duration_s measured."""
    stats: dict = {"latencies": [], "status": {}}
    loop = asyncio.get_running_loop()
    warm_deadline = loop.time() + warmup_s
    warm: dict = {"latencies": [], "status": {}}
    await asyncio.gather(*(_client(port, k, warm_deadline, warm) for k in keys))
    sys.stdout.write("warm\n")
    sys.stdout.flush()
    started = loop.time()
    await asyncio.gather(*(_client(port, k, started + duration_s, stats) for k in keys))
    elapsed = loop.time() - started
    lat = sorted(stats["latencies"])
    ok = sum(v for s, v in stats["status"].items() if s == 202)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else 0.0

    return {
        "requests": len(lat),
        "sent_total": len(lat) + len(warm["latencies"]),
        "accepted_202_total": ok + warm["status"].get(202, 0),  # warm-up included
        "accepted_202": ok,
        "status_counts": {str(k): v for k, v in sorted(stats["status"].items())},
        "elapsed_s": round(elapsed, 2),
        "rps": round(ok / elapsed, 1),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
    }


def drive_main(args: list[str]) -> None:
    """Client process: drive(port, keys file, duration, warm-up) -> "warm", then JSON on
    stdout."""
    import uvloop

    port, keys_file, duration, warmup = int(args[0]), args[1], float(args[2]), float(args[3])
    keys = json.loads(Path(keys_file).read_text())
    result = uvloop.run(_drive(port, keys, duration, warmup))
    sys.stdout.write(json.dumps(result))


# ---------------------------------------------------------------------------- fan-out


def _lane(i: int) -> str:
    # Distinct lanes over the 43 regions of /v1/reference and a few classes.
    from services.gateway.reference import tables

    regions = sorted(tables().regions)
    a, b = regions[i % len(regions)], regions[(i // len(regions) + 1 + i) % len(regions)]
    return f"{a}>{b if b != a else regions[0]}>van-{('4.2', '6.8', '9.6')[i % 3]}"


class _Carrier(asyncio.Protocol):
    """One carrier's WebSocket on a bare transport: the upgrade by hand, then frames
    parsed just far enough to timestamp each event (RFC 6455 framing; the server's
    frames are unmasked, ours masked). No JSON decode, no per-frame task or await: the
    clients share the 2 cores with the gateway they measure, so each frame must cost
    them next to nothing (the websockets library cost the clients more CPU than the
    gateway spent sending)."""

    def __init__(self, port: int, key: str, lane: str, state: dict) -> None:
        self.request = (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
        self.subscribe = orjson.dumps({"op": "subscribe", "lanes": [lane]})
        self.state = state
        self.buffer = b""
        self.upgraded = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked (RFC 6455 5.3); a zero mask leaves the payload as is.
        n = len(payload)
        head = bytes([0x80 | opcode]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        )
        self.transport.write(head + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000  # one receipt time for every frame of this read
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            if buf[9:12] != b"101":
                self.subscribed.set_exception(RuntimeError(buf[:end].decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            self._send(0x1, self.subscribe)
        pos, size = 0, len(buf)
        delays, state = self.state["delays_ms"], self.state
        while size - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size - start < n:
                break
            pos = start + n
            if opcode == 0x1:  # the gateway's frames are whole messages, one per frame
                if buf.startswith(b'{"type":"event"', start):
                    # The envelope is written id, type, v, ts, ...: the first "ts" of
                    # the event member is the event's.
                    at = buf.find(b'"ts":', buf.find(b'"event":{', start)) + 5
                    stop = at
                    while 48 <= buf[stop] <= 57:
                        stop += 1
                    ts = int(buf[at:stop])
                    if ts >= state["from_ms"]:
                        delays.append(round(now_ms - ts, 1))
                        state["ts_ms"].append(ts)
                elif not self.subscribed.done() and b'"subscribed"' in buf[start:pos]:
                    self.subscribed.set_result(None)
                else:
                    state["other"] += 1
            elif opcode == 0x9:  # ping: the server closes a socket that does not answer
                self._send(0xA, buf[start:pos])
            elif opcode == 0x8:
                if not self.closed.done():
                    self.closed.set_result(buf[start:pos])
                self.transport.close()
                return
        self.buffer = buf[pos:]


async def _ws_clients(port: int, carriers: list[list[str]]) -> dict:
    """Connects every (key, lane), subscribes, says "ready" on stdout, records the
    delay of every event frame whose ts is at least the one given by "from <ts ms>" on
    stdin (answered "from"), until "stop" comes; returns the delays."""
    loop = asyncio.get_running_loop()
    state: dict = {"delays_ms": [], "ts_ms": [], "other": 0, "from_ms": 0}
    opened = asyncio.Semaphore(50)  # connects at a time: no SYN flood of the backlog

    async def one(key: str, lane: str) -> _Carrier:
        async with opened:
            _, client = await loop.create_connection(
                lambda: _Carrier(port, key, lane, state), "127.0.0.1", port
            )
            await asyncio.wait_for(client.subscribed, 60)
        return client

    async with asyncio.timeout(120):
        clients = await asyncio.gather(*(one(k, lane) for k, lane in carriers))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).split())[:1] == ["from"]:
        state["from_ms"] = int(line[1])
        sys.stdout.write("from\n")
        sys.stdout.flush()
    dropped = sum(1 for c in clients if c.closed.done())  # before we close any
    for c in clients:
        c.transport.close()
    delays = state["delays_ms"]
    return {"delays_ms": delays, "ts_ms": state["ts_ms"],
            "frames": {"events": len(delays), "other": state["other"]},
            "connected": len(clients), "closed_by_server": dropped}  # fmt: skip


def ws_drive_main(args: list[str]) -> None:
    """Client process: ws_drive(port, carriers file) -> JSON on stdout after "ready"."""
    import uvloop

    port, carriers_file = int(args[0]), args[1]
    carriers = json.loads(Path(carriers_file).read_text())
    result = uvloop.run(_ws_clients(port, carriers))
    sys.stdout.write(json.dumps(result))


AUCTION_LOADS = 997  # open auctions the fan-out's bids go to
RESTED_EVERY = 20  # every 20th market event rests a new market load


def _market_event(i: int, lanes: list[str]) -> tuple[str, str, dict[str, Any]]:
    """The fan-out's i-th market event: (lane, type, data). Every RESTED_EVERY-th rests
    the market load r<n> (n = i // RESTED_EVERY); the others are bids on the open
    auction a<k> (k = i % AUCTION_LOADS). A load keeps its lane: r<n> and a<k> are on
    lanes[n % L] and lanes[k % L], as `_market_loads` writes them."""
    if i % RESTED_EVERY == 0:
        n = i // RESTED_EVERY
        return lanes[n % len(lanes)], "load.rested", {"load_id": f"r{n}"}
    k = i % AUCTION_LOADS
    price = 400_000 - i % 1000
    data = {"bid_id": f"b{i}", "load_id": f"a{k}", "carrier_id": "bench-bidder",
            "price_fen": price, "best_fen": price}  # fmt: skip
    return lanes[k % len(lanes)], "bid.accepted", data


async def _market_loads(database_url: str, schema: str, lanes: list[str], rested: int) -> None:
    """The loads the fan-out's events are about, as the gateway's POST would have written
    them: AUCTION_LOADS auctions, open, and `rested` market loads, requested. Without
    them every event of the run would park in the read-model projector waiting for a
    load that never comes, which no real stream does (every load is posted here)."""
    from services.common import db
    from services.gateway import registry

    now = time.time_ns() // 1_000_000
    pool = await db.create_pool(database_url, schema=schema, max_size=2)
    try:
        async with pool.acquire() as conn:
            shipper, _ = await registry.create(conn, "shipper", "bench fan-out shipper", now)
            sid = shipper["participant_id"]
            rows = []
            for kind, n in (("a", AUCTION_LOADS), ("r", rested)):
                for j in range(n):
                    origin, destination, vehicle_class = lanes[j % len(lanes)].split(">")
                    data = {
                        "load_id": f"{kind}{j}", "shipper_id": sid,
                        "lane": {"origin": origin, "destination": destination,
                                 "vehicle_class": vehicle_class},
                        "weight_kg": 3000, "volume_dm3": 12000,
                        "cargo_category": "building-materials",
                        "pickup_from": now + HOUR_MS, "pickup_to": now + 5 * HOUR_MS,
                    }  # fmt: skip
                    if kind == "a":
                        data |= {"mode": "auction", "auction": {
                            "closes_at": now + HOUR_MS, "reserve_fen": 450_000,
                            "instant_fen": None, "sealed": False}}  # fmt: skip
                    else:
                        data |= {"mode": "market", "limit_fen": 400_000}
                    rows.append((f"{kind}{j}", sid, "open" if kind == "a" else "requested",
                                 origin, destination, vehicle_class, f"c-{kind}{j}",
                                 orjson.dumps(data).decode(), now))  # fmt: skip
            await conn.copy_records_to_table(
                "load", records=rows, schema_name=schema,
                columns=["load_id", "shipper_id", "status", "origin", "destination",
                         "vehicle_class", "command_id", "data", "requested_ms"],
            )  # fmt: skip
    finally:
        await db.close_pool(pool)


async def _produce_market(
    bootstrap: str, topic: str, lanes: list[str], rate: float, duration_s: float,
    measure_from_ms: int = 0,
) -> tuple[int, int]:  # fmt: skip
    """rate events a second for duration_s, in 10 ms steps, the events _market_event
    numbers 0, 1, ...; returns how many, and the number of the first one whose ts is
    measure_from_ms or later (the first of the measured part).

    Each step's events go out as one BatchBuilder per partition (placed by the default
    partitioner, so a lane stays on one partition) with no linger: an event's ts is
    set when its step is built, a few ms at most before the broker appends it, and the
    producer costs the shared cores little (send() per event cost ~0.1 s/s).
    """
    from aiokafka.partitioner import DefaultPartitioner

    from services.common.envelope import encode, make
    from services.common.kafka import make_producer

    producer = make_producer(bootstrap, client_id="bench-market", linger_ms=0)
    await producer.start()
    partitions = sorted(await producer.partitions_for(topic))
    place = {lane: DefaultPartitioner()(lane.encode(), partitions, None) for lane in lanes}
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    first_measured = None
    pending: list = []
    try:
        while (elapsed := loop.time() - started) < duration_s:
            due = int(rate * elapsed) - sent
            batches: dict[int, Any] = {}
            now_ms = time.time_ns() // 1_000_000
            if first_measured is None and now_ms >= measure_from_ms:
                first_measured = sent
            for _ in range(max(0, due)):
                lane, type_, data = _market_event(sent, lanes)
                event = make(type_, data, lane, "matching", now_ms)
                p = place[lane]
                builder = batches.get(p)
                if builder is None:
                    builder = batches[p] = producer.create_batch()
                if builder.append(key=lane.encode(), value=encode(event), timestamp=None) is None:
                    raise RuntimeError("a step's events exceed one batch: raise max_batch_size")
                sent += 1
            for p, builder in batches.items():
                pending.append(await producer.send_batch(builder, topic, partition=p))
            if len(pending) > 500:
                await asyncio.gather(*pending)
                pending = []
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent, sent if first_measured is None else first_measured


def _measure_ws(env: dict, port: int, carriers: list[list[str]], bootstrap: str, topic: str,
                lanes: list[str], rate: float, duration_s: float, procs: int,
                state_dir: Path | None = None, warmup_s: float = 0.0) -> dict:  # fmt: skip
    """The fan-out measure: after warmup_s of the same traffic, unmeasured (a broker
    just started compiles its fetch and produce paths under load for a minute or
    more), duration_s measured."""
    env = dict(env, WLEX_GATEWAY_STREAM_CONNECTIONS_MAX=str(len(carriers) + 100))
    server = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    clients: list[subprocess.Popen] = []
    files = []
    try:
        _wait_healthy(port, server)
        for i in range(procs):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(carriers[i::procs], f)
                files.append(Path(f.name))
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "loadtests.bench_gateway", "--ws-drive", str(port), f.name],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))  # fmt: skip
        connect_started = time.monotonic()
        for c in clients:
            line = c.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a client process did not connect: {line!r}")
        connect_s = time.monotonic() - connect_started
        # One stream for the warm-up and the measure: stopping and starting the
        # producer between them put a burst on a gateway idle for seconds at the
        # start of the measure. The measured part is the events of ts measure_from_ms
        # and later, for the clients and in the producer's count.
        measure_from_ms = time.time_ns() // 1_000_000 + round(warmup_s * 1000)
        for c in clients:
            c.stdin.write(f"from {measure_from_ms}\n")
            c.stdin.flush()
            if c.stdout.readline().strip() != "from":
                raise RuntimeError("a client process did not take the measure's start")
        production: list[tuple[int, int]] = []
        producer_thread = threading.Thread(
            target=lambda: production.append(
                asyncio.run(_produce_market(bootstrap, topic, lanes, rate,
                                            warmup_s + duration_s, measure_from_ms))
            ),
            name="market producer",
        )  # fmt: skip
        producer_thread.start()
        time.sleep(max(0.0, measure_from_ms / 1000 - time.time()))
        lag_before, projected_before = _gateway_counts(port)
        proc = psutil.Process(server.pid)
        cpu_before = proc.cpu_times()
        # The measuring side's CPU too: the clients and the producer share the cores
        # with the gateway, and must not be what the latency measures.
        measuring = [psutil.Process(c.pid) for c in clients] + [psutil.Process()]
        measuring_before = _cpu_s(measuring)
        # PostgreSQL and Kafka share the cores too (a stack of this run only).
        stack_before = {n: _cpu_s(ps) for n, ps in _stack_processes(state_dir).items()}
        producer_thread.join()
        if not production:
            raise RuntimeError("the market producer failed (its traceback is above)")
        sent, first = production[0]
        produced = sent - first
        time.sleep(2.0)  # let the last frames arrive
        stack_after = {n: _cpu_s(ps) for n, ps in _stack_processes(state_dir).items()}
        stack_cpu = {
            f"{name}_cpu_s_per_s": round(_spent_s(stack_before[name], after) / (duration_s + 2), 3)
            for name, after in stack_after.items()
            if state_dir is not None
        }
        cpu = proc.cpu_times()
        cpu_s = (cpu.user - cpu_before.user) + (cpu.system - cpu_before.system)
        clients_cpu = _cpu_s(measuring[:-1])
        producer_cpu = _cpu_s(measuring[-1:])
        lag_after, projected_after = _gateway_counts(port)
        hub_lag = _hub_lag(lag_before, lag_after)
        projected = {k: int(n - projected_before.get(k, 0.0)) for k, n in projected_after.items()}
        results = []
        for c in clients:
            out, _ = c.communicate("stop\n", timeout=120)
            results.append(json.loads(out))
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        _stop(server)
        for f in files:
            f.unlink(missing_ok=True)
    delays = sorted(d for r in results for d in r["delays_ms"])
    # p99 of each second of the measure (by the events' ts): a tail made in one stall
    # shows as one bad second, a loop that cannot keep up as a rising series.
    by_second: dict[int, list[float]] = {}
    t0 = min((min(r["ts_ms"]) for r in results if r["ts_ms"]), default=0)
    for r in results:
        for ts, d in zip(r["ts_ms"], r["delays_ms"], strict=True):
            by_second.setdefault((ts - t0) // 1000, []).append(d)
    p99_by_second = [round(sorted(v)[int(0.99 * len(v))], 1) for _, v in sorted(by_second.items())]
    per_lane = {}
    for _, lane in carriers:
        per_lane[lane] = per_lane.get(lane, 0) + 1
    # An event goes to the carriers subscribed to its lane.
    expected = sum(
        per_lane.get(_market_event(i, lanes)[0], 0) for i in range(first, first + produced)
    )

    def pct(q: float) -> float:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1) if delays else 0.0

    return {
        "carriers": sum(r["connected"] for r in results),
        "connect_s": round(connect_s, 2),
        "warmup_s": warmup_s,
        "events_produced": produced,
        "events_per_s": round(produced / duration_s, 1),
        "deliveries": len(delays),
        "deliveries_expected": expected,
        "deliveries_per_s": round(len(delays) / duration_s, 1),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "p99_ms_by_second": p99_by_second,
        "first_ts_ms": t0,  # where the seconds of p99_ms_by_second count from
        "server_cpu_s_per_s": round(cpu_s / (duration_s + 2.0), 3),
        "clients_cpu_s_per_s": round(
            _spent_s(measuring_before, clients_cpu) / (duration_s + 2.0), 3
        ),
        "producer_cpu_s_per_s": round(
            _spent_s(measuring_before, producer_cpu) / (duration_s + 2.0), 3
        ),
        "client_procs": procs,
        # PostgreSQL's and Kafka's, when this run started them (postgres_cpu_s_per_s, ...).
        **stack_cpu,
        # From the event's ts to the hub's fan-out (queued to the sockets), by the
        # gateway's own histogram: what the gateway adds before the socket writes.
        "hub_lag_ms_at_most": hub_lag,
        # The read-model projector's events of the measured part, by outcome: every
        # event's load is in the tables, so none should park.
        "projected": projected,
        "closed_by_server": sum(r.get("closed_by_server", 0) for r in results),
    }


def _gateway_counts(port: int) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """From one read of the gateway's /metrics: the buckets of
    wlex_gateway_stream_event_lag_seconds as (le, count), and the read-model projector's
    events so far by outcome (wlex_gateway_projection_events_total: applied, parked, ...)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    buckets: list[tuple[float, float]] = []
    projected: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("wlex_gateway_stream_event_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("wlex_gateway_projection_events_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            projected[outcome] = float(line.rsplit(" ", 1)[1])
    return buckets, projected


def _hub_lag(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> dict:
    """p50 / p99 of the lag histogram's growth from before to after, as the upper bound
    of the bucket they fall in, in ms."""
    counted = dict(before)
    buckets = [(le, count - counted.get(le, 0.0)) for le, count in after]
    total = buckets[-1][1] if buckets else 0.0

    def bound(q: float) -> float | None:
        for le, count in buckets:
            if total and count >= q * total:
                return le * 1000
        return None

    return {"p50": bound(0.5), "p99": bound(0.99), "events": int(total)}


async def _carriers(database_url: str, schema: str, n: int, lanes: list[str]) -> list:
    from services.common import db
    from services.gateway import registry

    pool = await db.create_pool(database_url, schema=schema, max_size=2)
    try:
        await db.migrate(pool, "gateway")
        out = []
        async with pool.acquire() as conn:
            for i in range(n):
                _, key = await registry.create(conn, "carrier", f"bench carrier {i}",
                                               time.time_ns() // 10**6)  # fmt: skip
                out.append([key, lanes[i % len(lanes)]])
        return out
    finally:
        await db.close_pool(pool)


# ---------------------------------------------------------------------------- projector


async def _projector_burst(database_url: str, parked: bool, auctions: int = 200,
                           bids: int = 9, rounds: int = 5, batch: int = 500) -> dict:  # fmt: skip
    """The read-model projector alone (Projector.apply, no Kafka): `rounds` bursts of
    `auctions` auction.opened and `bids` bid.accepted each, in batches of `batch`, into
    a new schema. parked: the loads are not in the gateway's table (every event is
    parked, and the parked rows pile up; the fan-out measure's case until it wrote its
    loads first), else they are. Gives events/s, the projector's CPU per event and
    statements per batch."""

    from services.common import db
    from services.common.envelope import make
    from services.gateway import registry
    from services.gateway.projection_service import Projector

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    pool = await db.create_pool(database_url, schema=schema, max_size=2)
    now = time.time_ns() // 1_000_000
    try:
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            shipper, _ = await registry.create(conn, "shipper", "bench shipper", now)
            if not parked:
                await conn.executemany(
                    "INSERT INTO load (load_id, shipper_id, status, origin, destination,"
                    " vehicle_class, command_id, data, requested_ms) VALUES ($1, $2, 'requested',"
                    " '420100', '420600', 'van-9.6', $3, '{}'::jsonb, $4)",
                    [(f"L{r}-{i}", shipper["participant_id"], f"c{r}-{i}", now)
                     for r in range(rounds) for i in range(auctions)],
                )  # fmt: skip
        events = []
        for r in range(rounds):
            lane = "420100>420600>van-9.6"
            events += [make("auction.opened", {"load_id": f"L{r}-{i}"}, lane, "matching", now)
                       for i in range(auctions)]  # fmt: skip
            events += [
                make("bid.accepted", {"bid_id": f"b{r}-{i}-{j}", "load_id": f"L{r}-{i}",
                                      "carrier_id": "c", "price_fen": 300_000 - j,
                                      "best_fen": 300_000 - j}, lane, "matching", now)
                for j in range(bids) for i in range(auctions)
            ]  # fmt: skip
        projector = Projector(pool)
        await projector.start()
        statements = []
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(events), batch):
            await projector.apply(events[i : i + batch])
            statements.append(getattr(projector, "statements", None))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return {
            "parked": parked,
            "events": len(events),
            "events_per_s": round(len(events) / elapsed, 1),
            "cpu_us_per_event": round(cpu * 1e6 / len(events), 1),
            "statements_per_batch": statements[-1],
        }
    finally:
        await db.close_pool(pool)
        await db.drop_schema(database_url, schema)


# ---------------------------------------------------------------------------- orchestration


def _wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not healthy in time")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stack_processes(state_dir: Path | None) -> dict[str, list[psutil.Process]]:
    """PostgreSQL (postmaster and backends) and Kafka of a stack this run started."""
    found: dict[str, list[psutil.Process]] = {"postgres": [], "kafka": []}
    if state_dir is None:
        return found
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if not any(str(state_dir) in arg for arg in cmdline):
            continue
        if proc.info["name"] == "postgres":
            found["postgres"] += [proc, *proc.children(recursive=True)]
        elif proc.info["name"] == "java":
            found["kafka"].append(proc)
    return found


def _cpu_s(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds of each process by pid."""
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # a backend that ended: its time is lost, not counted twice
            continue
        out[proc.pid] = t.user + t.system
    return out


def _spent_s(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that started in between (a backend the pool opened) spent all of its time.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _measure(cmd: list[str], env: dict, port: int, keys_file: Path, duration_s: float,
             state_dir: Path | None = None, warmup_s: float = 10.0) -> dict:  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_healthy(port, proc)
        server = psutil.Process(proc.pid)
        driver = subprocess.Popen(
            [sys.executable, "-m", "loadtests.bench_gateway", "--drive", str(port),
             str(keys_file), str(duration_s), str(warmup_s)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # CPU is counted from the end of the warm-up: a stack started for this run has
        # a cold JVM, whose JIT compiles Kafka's produce path in the first seconds of
        # load (measured: Kafka's CPU per POST 0.44-0.54 ms counted from the start, 0.10-
        # 0.14 ms on a broker that had run a while), and that is not the cost of a POST.
        if driver.stdout.readline().strip() != "warm":
            raise RuntimeError("the driver did not finish its warm-up")
        cpu_before = server.cpu_times()
        others_before = {n: _cpu_s(procs) for n, procs in _stack_processes(state_dir).items()}
        out, _ = driver.communicate(timeout=duration_s + 120)
        if driver.returncode != 0:
            raise RuntimeError(f"the driver failed ({driver.returncode})")
        cpu_after = server.cpu_times()
        # Listed again: PostgreSQL starts a backend for each connection the pool opens.
        others_after = {n: _cpu_s(procs) for n, procs in _stack_processes(state_dir).items()}
        result = json.loads(out)
        # CPU of the server process per request of the measured window: less sensitive
        # than rps to what else the shared machine is doing.
        cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        sent = max(1, result["requests"])
        result["server_cpu_ms_per_request"] = round(cpu_s * 1000 / sent, 3)
        if state_dir is not None:
            # What the request cost PostgreSQL and Kafka (a stack of this run only).
            for name, after in others_after.items():
                spent = _spent_s(others_before[name], after)
                result[f"{name}_cpu_ms_per_request"] = round(spent * 1000 / sent, 3)
        return result
    finally:
        _stop(proc)


async def _prepare(database_url: str, bootstrap: str, schema: str, prefix: str, n: int) -> list:
    from services.common import db
    from services.common.topics import create_topics
    from services.gateway import registry

    await create_topics(bootstrap, prefix, partitions=4)
    pool = await db.create_pool(database_url, schema=schema, max_size=2)
    try:
        await db.migrate(pool, "gateway")
        keys = []
        async with pool.acquire() as conn:
            for i in range(n):
                _, key = await registry.create(
                    conn, "shipper", f"bench {i}", time.time_ns() // 10**6
                )
                keys.append(key)
        return keys
    finally:
        await db.close_pool(pool)


async def _count(database_url: str, schema: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(f'SELECT count(*) FROM "{schema}".load')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before each measure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--ws-carriers", type=int, default=1000)
    parser.add_argument("--ws-rate", type=float, default=2000.0, help="market events a second")
    parser.add_argument("--ws-duration", type=float, default=20.0)
    parser.add_argument("--ws-warmup", type=float, default=None,
                        help="seconds of the same traffic before the fan-out measure "
                             "(default 120 with the benchmark's own stack, 30 with "
                             "WLEX_KAFKA_BOOTSTRAP / WLEX_DATABASE_URL)")  # fmt: skip
    parser.add_argument("--ws-lanes", type=int, default=200, help="each carrier follows one")
    parser.add_argument("--ws-procs", type=int, default=2, help="client processes")
    parser.add_argument("--ws-only", action="store_true", help="skip the POST /v1/loads part")
    parser.add_argument("--projector", action="store_true",
                        help="only the read-model projector's bursts (printed, not written)")  # fmt: skip
    args = parser.parse_args(argv)

    from services.common import db
    from services.devenv.ports import free_port_block

    bootstrap = os.environ.get("WLEX_KAFKA_BOOTSTRAP", "")
    database_url = os.environ.get("WLEX_DATABASE_URL", "")
    stack = state_dir = None
    if not (bootstrap and database_url):
        from services.devenv.stack import start_isolated

        state_dir = Path(tempfile.mkdtemp(prefix="wlex-bench-"))
        stack = start_isolated(state_dir)
        bootstrap, database_url = stack.kafka_bootstrap, stack.database_url
    if args.ws_warmup is None:
        # A broker just started compiles its fetch paths under load for minutes: on a
        # new one the fan-out p99 fell from 129-153 ms in the first 50 s of this load
        # to 48-80 ms in the next 50 (docs/performance.md).
        args.ws_warmup = 120.0 if stack is not None else 30.0
    try:
        if args.projector:
            for parked in (False, True):
                print(json.dumps(asyncio.run(_projector_burst(database_url, parked))))
            return {}
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        keys = asyncio.run(_prepare(database_url, bootstrap, schema, prefix, args.clients))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(keys, f)
            keys_file = Path(f.name)
        port = free_port_block(1)
        env = dict(
            os.environ,
            WLEX_KAFKA_BOOTSTRAP=bootstrap,
            WLEX_DATABASE_URL=database_url,
            WLEX_TOPIC_PREFIX=prefix,
            WLEX_HTTP_PORT=str(port),
            WLEX_GATEWAY_DB_SCHEMA=schema,
            WLEX_LOG_LEVEL="WARNING",
            WLEX_GATEWAY_RATE_PER_S="100000",
            WLEX_GATEWAY_RATE_BURST="100000",
        )
        post = bare = None
        loads = 0
        if not args.ws_only:
            bare = _measure([sys.executable, "-m", "loadtests.bench_gateway", "--serve-bare"],
                            env, port, keys_file, args.duration, state_dir, args.warmup)  # fmt: skip
            post = _measure([sys.executable, "-m", "services.gateway"], env, port, keys_file,
                            args.duration, state_dir, args.warmup)  # fmt: skip
            loads = asyncio.run(_count(database_url, schema))
        ws = None
        # The fan-out in a schema of its own: the same read model whether or not the
        # POST part ran before it, and its loads apart from the POSTs' count.
        ws_schema = schema + "_ws"
        if args.ws_carriers:
            lanes = [_lane(i) for i in range(args.ws_lanes)]
            carriers = asyncio.run(_carriers(database_url, ws_schema, args.ws_carriers, lanes))
            events = args.ws_rate * (args.ws_warmup + args.ws_duration + 5)
            rested = int(events) // RESTED_EVERY + 1
            asyncio.run(_market_loads(database_url, ws_schema, lanes, rested))
            ws = _measure_ws(dict(env, WLEX_GATEWAY_DB_SCHEMA=ws_schema), port, carriers,
                             bootstrap, prefix + "market", lanes, args.ws_rate,
                             args.ws_duration, args.ws_procs, state_dir, args.ws_warmup)  # fmt: skip
        for name in (schema, ws_schema):
            asyncio.run(db.drop_schema(database_url, name))
    finally:
        if stack is not None:
            stack.down()
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # The clients, the servers, PostgreSQL and Kafka share the machine: its load says
        # how much of it this run had.
        "machine": machine(),
        "commit": commit(),
    }
    if post is not None and bare is not None:
        ratio = round(post["rps"] / bare["rps"], 3) if bare["rps"] else 0.0
        report.update({
            "clients": args.clients,
            "duration_s": args.duration,
            "post_loads": post,
            "bare": bare,
            "post_loads_rps": post["rps"],
            "bare_rps": bare["rps"],
            "ratio": ratio,
            "cpu_ratio": round(
                bare["server_cpu_ms_per_request"] / post["server_cpu_ms_per_request"], 3
            ),
            "loads_recorded": loads,
        })  # fmt: skip
    elif args.out.exists():
        # A fan-out-only run keeps the last POST figures of the file.
        old = json.loads(args.out.read_text())
        report.update({k: v for k, v in old.items() if k not in report and not k.startswith("ws")})
    if ws is None and args.out.exists():
        # A POST-only run (--ws-carriers 0) keeps the last fan-out figures of the file.
        old = json.loads(args.out.read_text())
        report.update({k: v for k, v in old.items() if k.startswith("ws")})
    if ws is not None:
        report.update({
            "ws": ws | {"lanes": args.ws_lanes, "duration_s": args.ws_duration,
                        "rate_target": args.ws_rate, "when": report["when"]},
            "ws_carriers": ws["carriers"],
            "ws_events_per_s": ws["events_per_s"],
            "ws_deliveries_per_s": ws["deliveries_per_s"],
            "ws_p99_ms": ws["latency_ms"]["p99"],
        })  # fmt: skip
    report["targets"] = {k: {"op": op, "target": t} for k, (op, t) in TARGETS.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if post is not None and bare is not None:
        print(f"POST /v1/loads: {post['rps']:.0f}/s (p50 {post['latency_ms']['p50']} ms, "
              f"p99 {post['latency_ms']['p99']} ms)  bare: {bare['rps']:.0f}/s  ratio "
              f"{report['ratio']}")  # fmt: skip
        print(f"server CPU per request: gateway {post['server_cpu_ms_per_request']} ms,"
              f" bare {bare['server_cpu_ms_per_request']} ms")  # fmt: skip
        if "postgres_cpu_ms_per_request" in post:
            print(f"behind each POST: PostgreSQL {post['postgres_cpu_ms_per_request']} ms,"
                  f" Kafka {post['kafka_cpu_ms_per_request']} ms of CPU")  # fmt: skip
        print(
            f"loads recorded {loads}; 202 answers, warm-up included: {post['accepted_202_total']}"
        )
    if ws is not None:
        print(f"/v1/stream: {ws['carriers']} carriers, {ws['events_per_s']} events/s ->"
              f" {ws['deliveries_per_s']} frames/s ({ws['deliveries']} of"
              f" {ws['deliveries_expected']} expected), p50 {ws['latency_ms']['p50']} ms,"
              f" p99 {ws['latency_ms']['p99']} ms, server CPU {ws['server_cpu_s_per_s']} s/s")  # fmt: skip
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-bare"]:
        serve_bare()
    elif sys.argv[1:2] == ["--drive"]:
        drive_main(sys.argv[2:])
    elif sys.argv[1:2] == ["--ws-drive"]:
        ws_drive_main(sys.argv[2:])
    else:
        main(sys.argv[1:])
