"""The matching pipeline end to end over a real broker: throughput against a
transactional passthrough, and latency at a fixed offered rate.

throughput: preload `--commands` commands of the freight mix (loadtests.workloads, the
    core benchmark's) into `orders` (12 partitions, keyed by lane), then time the
    matching service from ready until every outcome is committed in `market`. In the
    same run a transactional passthrough (consume, produce the same bytes to the same
    partition, same batching, same transactions: services.matching.pipeline with an
    identity transform) reads the same preloaded log: the ceiling of the Python client
    stack. ratio = pipeline / passthrough.
latency: the service as its own process (`python -m services.matching`), fed at
    `--rate` commands/s for `--seconds` s by a generator process of its own (commands
    encoded beforehand, stamped with the wall clock on each `--tick-ms` tick, queued per
    partition and handed to the producer as one batch per partition whenever it takes
    one); latency = when a read_committed consumer of `market` here receives an outcome
    minus the outcome's ts, which is its command's ts (the service's own clock-tick
    outcomes and the first `--warmup-s` seconds excluded). CPU shares of the generator,
    the reader, the service and the broker are reported with it. A broker the benchmark
    started itself first gets a whole unmeasured run of `--broker-warmup-s` seconds
    (120), so the figure is a warm broker's; that pass's percentiles are kept too.
transactions (`--txn-rounds N`): N back-to-back transactions shaped like the service's,
    with aiokafka's retry waits and with the service's, alternately.

Starts its own broker (services.devenv.stack, free loopback ports) unless --bootstrap
is given, so it never touches a running demo. Writes loadtests/results/bench_pipeline.json.

    python -m loadtests.bench_pipeline [--quick] [--sweep]
    python -m loadtests.bench_pipeline --latency-only [--seconds 60] [--service-env N=V]
    python -m loadtests.bench_pipeline --txn-rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from loadtests import workloads
from loadtests.report import check_targets, commit, machine
from services.common.envelope import encode
from services.common.kafka import (
    make_consumer,
    make_producer,
    static_partitions,
    transactional_ids_for,
)
from services.common.kafka_transactions import set_add_partitions_backoff
from services.common.topics import create_topics
from services.matching.config import MatchingSettings
from services.matching.pipeline import Outputs, Pipeline
from services.matching.service import MatchingService

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results" / "bench_pipeline.json"
PARTITIONS = 12  # the AsyncAPI document's count for orders and market
SEED = 20260302
TARGETS = {"ratio": (">=", 0.7), "pipeline_cmds_per_s": (">=", 50_000), "p99_ms": ("<=", 50.0)}
RUN_TIMEOUT_S = 600.0  # one throughput run; beyond it the bench gives up


def say(msg: str) -> None:
    print(f"[bench_pipeline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def partition_of(key: bytes) -> int:
    """aiokafka's (and Kafka's) default partitioner for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def keyed(command: dict) -> tuple[bytes | None, int]:
    """(record key, partition): a lane's commands by the lane key; the mix's clock ticks
    (no key) by their id, so the preload is the same every run."""
    if command["key"] is None:
        return None, partition_of(command["id"].encode())
    key = command["key"].encode()
    return key, partition_of(key)


# -- setup -------------------------------------------------------------------------------


def start_own_stack(state_dir: Path):
    from services.devenv.stack import start_isolated

    return start_isolated(state_dir, log=lambda msg: say(f"stack: {msg}"))


async def preload(bootstrap: str, topic: str, commands: list[dict]) -> float:
    """Writes commands keyed by lane, partitioned as the default partitioner does, in
    BatchBuilders (a send() per record would take longer than the benchmark)."""
    started = time.perf_counter()
    producer = make_producer(
        bootstrap, client_id="bench-preload", linger_ms=5, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for c in commands:
            key, p = keyed(c)
            by_partition.setdefault(p, []).append((key, encode(c)))
        futures = []
        for p, records in by_partition.items():
            builder = producer.create_batch()
            for key, value in records:
                if builder.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(builder, topic, partition=p))
                    builder = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def matching_settings(bootstrap: str, prefix: str, args, **kw) -> MatchingSettings:
    values = dict(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        matching_batch_records_max=args.batch,
        matching_linger_ms=args.linger_ms,
    )
    values.update(kw)
    return MatchingSettings(**values)


# -- throughput --------------------------------------------------------------------------


async def _timed(
    run, done: asyncio.Event, ready: asyncio.Event, stop: asyncio.Event, what: str
) -> float:
    task = asyncio.create_task(run)
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await ready.wait()
            started = time.perf_counter()
            waiter = asyncio.create_task(done.wait())
            finished, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task in finished:
                waiter.cancel()
                task.result()
                raise RuntimeError(f"{what} ended before it caught up")
            elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    return elapsed


async def run_pipeline(
    bootstrap: str, orders_prefix: str, args, end: dict[int, int], snapshots: bool = True
) -> tuple[float, int]:
    """The matching service, in this process, over orders_prefix's preloaded orders.
    Returns (seconds from ready to the last commit, events produced)."""
    extra = (
        {}
        if snapshots
        else {"matching_snapshot_every_commands": 0, "matching_snapshot_interval_s": 0}
    )
    settings = matching_settings(
        bootstrap, orders_prefix, args, matching_tick_interval_ms=0, **extra
    )
    service = MatchingService(settings)
    stop, ready, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    events = 0
    base_commit = service.on_commit

    def on_commit(batch, out, commit_s):
        nonlocal events
        base_commit(batch, out, commit_s)
        events += sum(len(r) for r in out.records.values())
        if all(service.next_offset[p] >= end[p] for p in service.owned):
            done.set()

    service.on_commit = on_commit
    elapsed = await _timed(service.run(stop, on_ready=ready.set), done, ready, stop, "pipeline")
    return elapsed, events


async def run_passthrough(
    bootstrap: str, orders_prefix: str, out_prefix: str, args, end: dict[int, int]
) -> float:
    """Consume orders_prefix's orders and produce the same bytes to the same partition of
    out_prefix's market, through the same Pipeline, batching and transactions."""
    orders = orders_prefix + "orders"
    group = out_prefix + "passthrough"
    consumer = make_consumer(
        bootstrap,
        group_id=group,
        partitions=static_partitions(orders, range(PARTITIONS)),
        client_id="passthrough",
        max_partition_fetch_bytes=MatchingSettings().matching_fetch_partition_bytes,
    )
    txn_ids = transactional_ids_for(
        "passthrough", orders, range(PARTITIONS), MatchingSettings().matching_transactional_ids
    )
    stop, ready, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    position = dict.fromkeys(range(PARTITIONS), 0)

    def transform(batch) -> Outputs:
        out = Outputs()
        for r in batch.records:
            out.records.setdefault(r.partition, []).append((r.key, r.value))
        return out

    def on_commit(batch, out, commit_s):
        for tp, offset in batch.offsets.items():
            position[tp.partition] = offset
        if all(position[p] >= end[p] for p in range(PARTITIONS)):
            done.set()

    async def on_start(_consumer):
        ready.set()

    # The service's transactions, retries included (MatchingService.run does the same).
    set_add_partitions_backoff(MatchingSettings().matching_add_partitions_backoff_ms / 1000)

    pipeline = Pipeline(
        consumer=consumer,
        new_producer=lambda slot: make_producer(
            bootstrap,
            transactional_id=txn_ids[slot],
            client_id="passthrough",
            linger_ms=args.linger_ms,
            max_batch_size=MatchingSettings().matching_max_batch_bytes,
            retry_backoff_ms=MatchingSettings().matching_retry_backoff_ms,
        ),
        transform=transform,
        out_topic=out_prefix + "market",
        group_id=group,
        dlq_topic=out_prefix + "dlq",
        source="passthrough",
        validate=None,
        batch_records_max=args.batch,
        # the service's loop
        gather_poll_ms=MatchingSettings().matching_gather_poll_ms,
        producers=MatchingSettings().matching_transactional_ids,
        transactions_in_flight=MatchingSettings().matching_transactions_in_flight,
        early_begin=MatchingSettings().matching_early_begin,
        on_start=on_start,
        on_commit=on_commit,
    )
    return await _timed(pipeline.run(stop), done, ready, stop, "passthrough")


# -- latency -----------------------------------------------------------------------------

TS_PLACEHOLDER = b"1000000000000"  # 13 digits, like every epoch-ms until the year 2286
TS_FIELD = b'"ts":' + TS_PLACEHOLDER
ID_PREFIX = "lat"  # of the latency run's commands
OUR_OUTCOME = b'{"id":"' + ID_PREFIX.encode()


def encode_offer(rate: int, seconds: float) -> tuple[list[bytes | None], list[int], list[bytes]]:
    """The latency run's commands, encoded before the clock starts: (keys, partitions,
    values), each value with TS_PLACEHOLDER where its ts goes (stamped at send)."""
    n = int(rate * seconds)
    commands = workloads.freight_mix(
        n, SEED + 1, start_ms=int(time.time() * 1000), id_prefix=ID_PREFIX
    )
    keys, parts, values = [], [], []
    for c in commands:
        key, p = keyed(c)
        c["ts"] = int(TS_PLACEHOLDER)
        value = encode(c)
        if value.count(TS_FIELD) != 1:  # the placeholder must name the one ts field
            raise RuntimeError(f"cannot place the ts in {value[:120]!r}")
        keys.append(key)
        parts.append(p)
        values.append(value)
    return keys, parts, values


async def offer(
    bootstrap: str, topic: str, rate: int, seconds: float, tick_ms: float, conn
) -> dict:
    """Offers rate commands/s for seconds s: on every tick of tick_ms, what is due by
    then, each command's ts stamped with the wall clock at that tick, appended to its
    partition's queue. One sender task per partition hands its queue to the producer as
    one BatchBuilder whenever the producer takes one: aiokafka's send_batch waits until
    the partition's previous batch has left (one request in flight per broker), so
    handing it a batch per tick would pace the generator by the broker's round trip
    (what held the earlier generator at 3,000-6,400 commands/s), while a queue that
    grows meanwhile keeps the offered rate and counts the wait in the latency. No
    per-record future or await; a callback counts refused batches."""
    keys, parts, values = encode_offer(rate, seconds)
    n = len(values)
    where = [v.index(TS_FIELD) + 5 for v in values]
    producer = make_producer(bootstrap, client_id="bench-offer", linger_ms=0)
    await producer.start()
    partitions = sorted(set(parts))
    queues: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in partitions}
    wake = {p: asyncio.Event() for p in partitions}
    refused = []
    batches = 0

    def delivered(fut):
        if fut.cancelled() or fut.exception() is not None:
            refused.append(fut)

    async def sender(p: int, done: asyncio.Event) -> None:
        nonlocal batches
        queue, event = queues[p], wake[p]
        while True:
            if not queue:
                if done.is_set():
                    return
                event.clear()
                await event.wait()
                continue
            records = queue[:]
            queue.clear()
            builder = producer.create_batch()
            for key, value in records:
                if builder.append(key=key, value=value, timestamp=None) is None:
                    # Full (only after a long stall): send it, go on in a new one.
                    fut = await producer.send_batch(builder, topic, partition=p)
                    fut.add_done_callback(delivered)
                    batches += 1
                    builder = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None)
            fut = await producer.send_batch(builder, topic, partition=p)
            fut.add_done_callback(delivered)
            batches += 1

    conn.send(("ready", n))
    go_at = await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wall clock
    await asyncio.sleep(max(0.0, go_at - time.time()))
    done = asyncio.Event()
    senders = [asyncio.create_task(sender(p, done)) for p in partitions]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = ticks = late_ticks = 0
    tick_s = tick_ms / 1000
    while sent < n:
        due = min(n, int((time.perf_counter() - wall0) * rate) + 1)
        if due > sent:
            ts = b"%d" % int(time.time() * 1000)
            for j in range(sent, due):
                v, w = values[j], where[j]
                queues[parts[j]].append((keys[j], v[:w] + ts + v[w + 13 :]))
            for p in partitions:
                if queues[p]:
                    wake[p].set()
            sent = due
        ticks += 1
        delay = wall0 + ticks * tick_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late_ticks += 1
    offered_s = time.perf_counter() - wall0
    done.set()
    for event in wake.values():
        event.set()
    await asyncio.gather(*senders)
    await producer.flush()
    cpu_s = time.process_time() - cpu0
    await producer.stop()
    if refused:
        raise RuntimeError(f"{len(refused)} batches refused: {refused[0].exception()!r}")
    return {
        "commands": sent,
        "offered_s": offered_s,
        "achieved_cmds_per_s": sent / offered_s,
        "ticks": ticks,
        "late_ticks": late_ticks,
        "batches": batches,
        "generator_cpu_s": cpu_s,
        "generator_cpu_share": cpu_s / offered_s,
    }


def offer_process(conn, *args) -> None:
    """The generator's process (multiprocessing, spawn): offer(*args, conn), which says
    "ready" when its commands are encoded and then waits for the start time; its result
    is sent back on conn. Its own process, so the receiver and the generator never take turns
    on one event loop, and each one's CPU is its own."""
    try:
        result = uvloop.run(offer(*args, conn))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise
    conn.send(("done", result))


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid(bootstrap: str) -> int | None:
    """The process listening on the bootstrap address's port (the broker), if local."""
    import psutil

    port = int(bootstrap.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def run_latency(bootstrap: str, prefix: str, args) -> dict:
    """The service as a process; commands at args.rate/s for args.seconds s from a
    generator process; outcomes read here by a read_committed consumer of `market`.
    latency = receive time - the outcome's ts: an outcome's ts is its engine's clock,
    max(now, command ts), which is its command's ts since every partition's commands
    come with non-decreasing ts (stamped at send)."""
    import multiprocessing

    await create_topics(bootstrap, prefix)
    env = dict(
        os.environ,
        WLEX_KAFKA_BOOTSTRAP=bootstrap,
        WLEX_TOPIC_PREFIX=prefix,
        WLEX_SERVICE_NAME="matching",
        WLEX_HTTP_PORT="0",
        WLEX_MATCHING_BATCH_RECORDS_MAX=str(args.batch),
        WLEX_MATCHING_LINGER_MS=str(args.linger_ms),
    )
    for item in args.service_env:
        name, _, value = item.partition("=")
        env[name] = value
    log_path = Path(tempfile.gettempdir()) / f"bench_pipeline_matching_{os.getpid()}.log"
    with log_path.open("wb") as log:
        # Popen returns once the child is forked: no wait worth a thread.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "services.matching"],
            cwd=args.service_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    go_at = 0.0
    gen = None
    latencies: list[int] = []
    try:
        reader = AIOKafkaConsumer(
            prefix + "market",
            bootstrap_servers=bootstrap,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=args.reader_wait_ms,
        )
        await reader.start()
        await wait_log(log_path, "recovered", proc, 60)
        # The generator encodes its commands first (several seconds): it says when it is
        # ready, and starts at a wall-clock time given here.
        gen = ctx.Process(
            target=offer_process,
            args=(child, bootstrap, prefix + "orders", args.rate, args.seconds, args.tick_ms),
            daemon=True,
        )
        gen.start()
        kind, n = await loop.run_in_executor(None, parent.recv)
        if kind != "ready":
            raise RuntimeError(f"generator: {n}")
        go_at = time.time() + 0.5
        parent.send(go_at)
        say(f"latency: service ready; offering {args.rate:,} commands/s for {args.seconds} s")
        warmup_until_ms = int((go_at + args.warmup_s) * 1000)
        received = 0
        result: dict = {}

        async def receive(stop: asyncio.Event):
            nonlocal received
            append = latencies.append
            while not stop.is_set():
                fetched = await reader.getmany(timeout_ms=50)
                now = int(time.time() * 1000)
                for records in fetched.values():
                    for r in records:
                        # Only the id's start and the ts are read, from the envelope's
                        # fixed field order (id, type, v, ts, ...): far cheaper than
                        # decoding the JSON. An outcome's id is its command's id + ":"
                        # + index: outcomes of the service's own clock ticks (they come
                        # every second once the offering stops) are left out.
                        v = r.value
                        if not v.startswith(OUR_OUTCOME):
                            continue
                        received += 1
                        i = v.index(b'"ts":') + 5
                        ts = int(v[i : v.index(b",", i)])
                        if ts >= warmup_until_ms:
                            append(now - ts)

        stop = asyncio.Event()
        receiver = asyncio.create_task(receive(stop))
        await asyncio.sleep(max(0.0, go_at - time.time()))
        broker = broker_pid(bootstrap)
        broker_cpu0 = proc_cpu_s(broker) if broker else 0.0
        cpu0, service_cpu0, busy0 = time.process_time(), proc_cpu_s(proc.pid), machine_busy()
        window0 = time.perf_counter()
        kind, result = await loop.run_in_executor(None, parent.recv)
        if kind != "done":
            raise RuntimeError(f"generator: {result}")
        # The tail: until the outcomes stop coming for 3 s (bounded at 120 s), so a
        # service that fell behind shows its backlog in the percentiles rather than
        # having it cut off.
        tail_deadline = time.monotonic() + 120
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < tail_deadline and time.monotonic() - quiet_since < 3.0:
            await asyncio.sleep(0.5)
            if received != last:
                last, quiet_since = received, time.monotonic()
        # CPU over the whole window: offering and the tail until the outcomes stopped.
        window_s = time.perf_counter() - window0
        reader_cpu_s = time.process_time() - cpu0
        service_cpu_s = proc_cpu_s(proc.pid) - service_cpu0
        broker_cpu_s = proc_cpu_s(broker) - broker_cpu0 if broker else None
        busy1 = machine_busy()
        stop.set()
        await receiver
        await reader.stop()
    finally:
        if gen is not None:
            gen.join(timeout=10)
            if gen.is_alive():
                gen.terminate()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latencies.sort()
    if not latencies:
        raise RuntimeError(f"no outcomes measured; service log: {log_path}")

    def q(f):
        return latencies[min(len(latencies) - 1, int(f * len(latencies)))]

    return {
        "offered_cmds_per_s": args.rate,
        "achieved_cmds_per_s": result["achieved_cmds_per_s"],
        "seconds": args.seconds,
        "warmup_s": args.warmup_s,
        "tick_ms": args.tick_ms,
        "commands": result["commands"],
        "late_ticks": result["late_ticks"],
        "generator_batches": result["batches"],
        "outcomes_received": received,
        "outcomes_measured": len(latencies),
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": latencies[-1],
        "mean_ms": statistics.fmean(latencies),
        # CPU shares (1.0 = one core): the generator's while offering; the others' from
        # the start until the outcomes stopped coming (window_s); the machine's busy
        # share (1.0 = every core) over the same window, everyone's work included.
        "window_s": window_s,
        "generator_cpu_share": result["generator_cpu_share"],
        "reader_cpu_share": reader_cpu_s / window_s,
        "service_cpu_share": service_cpu_s / window_s,
        "broker_cpu_share": None if broker_cpu_s is None else broker_cpu_s / window_s,
        "machine_busy_share": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "service_env": list(args.service_env),
        "service_root": str(args.service_root),
    }


async def measure_latency(bootstrap: str, run_id: str, args) -> dict:
    """run_latency, after a warm-up pass of args.broker_warmup_s seconds at the same
    rate whose figures are kept under "warmup_pass". A broker just started compiles its
    transactional paths for minutes under load (its JIT threads took 0.28 of a core in
    the third minute, 0.04 in the sixth), and the tail that costs is not the steady
    state of a broker that runs for months."""
    warm = None
    if args.broker_warmup_s > 0:
        say(f"latency: warm-up pass of {args.broker_warmup_s:.0f} s (not the figure)")
        a = argparse.Namespace(**{**vars(args), "seconds": args.broker_warmup_s})
        warm = await run_latency(bootstrap, f"{run_id}.warm.", a)
        say(f"latency warm-up pass: p50 {warm['p50_ms']:.1f} ms, p99 {warm['p99_ms']:.1f} ms")
    latency = await run_latency(bootstrap, f"{run_id}.lat.", args)
    say(
        f"latency at {args.rate:,}/s: p50 {latency['p50_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
    )
    if warm is not None:
        latency["warmup_pass"] = {
            k: warm[k] for k in ("seconds", "p50_ms", "p90_ms", "p99_ms", "max_ms")
        }
    return latency


async def wait_log(path: Path, needle: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # A small local log file, read every 100 ms: not worth a thread.
    while needle not in path.read_text(errors="replace"):  # noqa: ASYNC240
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {path.read_text()[-2000:]}")  # noqa: ASYNC240
        if time.monotonic() > deadline:
            raise RuntimeError(f"service not ready after {timeout_s}s: {path}")
        await asyncio.sleep(0.1)


# -- snapshots ---------------------------------------------------------------------------


async def bench_snapshots(bootstrap: str, prefix: str, n: int) -> dict:
    """n resting orders (loadtests.workloads.iter_resting) in one engine per partition,
    their snapshots written to matching.snapshots as the service writes them, then the
    restart path timed: read the newest snapshot of every partition and restore."""
    from services.common.kafka import make_producer as _mp
    from services.matching import recovery
    from services.matching.engine import Engine

    await create_topics(bootstrap, prefix)
    say(f"snapshots: resting {n:,} orders in {PARTITIONS} engines")
    engines = [Engine() for _ in range(PARTITIONS)]
    pending: dict[int, list] = {}
    for c in workloads.iter_resting(n, SEED):
        p = partition_of(c["key"].encode())
        pending.setdefault(p, []).append(c)
        if len(pending[p]) >= 5000:
            engines[p].process(pending.pop(p))
    for p, cs in pending.items():
        engines[p].process(cs)
    cpu, wall = time.process_time(), time.perf_counter()
    raw_bytes = sum(len(e.snapshot()) for e in engines)
    snapshot_s = time.perf_counter() - wall
    records = [recovery.snapshot_record(p, e, 0, 0) for p, e in enumerate(engines)]
    write_s = time.perf_counter() - wall
    write_cpu_s = time.process_time() - cpu
    producer = _mp(bootstrap, client_id="bench-snapshots", max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        await asyncio.gather(
            *[
                await producer.send(prefix + "matching.snapshots", v, key=k, partition=0, headers=h)
                for k, v, h in records
            ]
        )
    finally:
        await producer.stop()
    del engines
    cpu, wall = time.process_time(), time.perf_counter()
    snaps = await recovery.latest_snapshots(
        bootstrap, prefix + "matching.snapshots", list(range(PARTITIONS)), timeout_s=600
    )
    read_s = time.perf_counter() - wall
    restored = [Engine.restore(s.state) for s in snaps.values()]
    restore_s = time.perf_counter() - wall
    restore_cpu_s = time.process_time() - cpu
    orders = sum(len(e.loads) + len(e.offers) for e in restored)
    return {
        "resting_orders": n,
        "restored_orders": orders,
        "partitions": PARTITIONS,
        "raw_bytes_total": raw_bytes,
        "zlib_bytes_total": sum(len(v) for _, v, _ in records),
        "zlib_bytes_largest_partition": max(len(v) for _, v, _ in records),
        "snapshot_s_uncompressed": snapshot_s,
        "snapshot_and_zlib_s": write_s,
        "snapshot_and_zlib_cpu_s": write_cpu_s,
        "read_from_kafka_s": read_s,
        "restore_s": restore_s,
        "restore_cpu_s": restore_cpu_s,
    }


# -- back-to-back transactions -----------------------------------------------------------


async def time_transactions(
    bootstrap: str, prefix: str, tag: str, rounds: int, backoffs: tuple
) -> list:
    """rounds transactions one after the other, each as the service's: one BatchBuilder
    of 30 records to every partition of market, the offsets of every partition of
    orders, commit. backoffs = (retry_backoff_ms, AddPartitionsToTxn backoff in ms).
    Returns each transaction's ms from begin to the end of the commit."""
    retry_ms, add_partitions_ms = backoffs
    set_add_partitions_backoff(add_partitions_ms / 1000)
    producer = make_producer(
        bootstrap,
        transactional_id=f"{prefix}probe-{tag}",
        client_id="bench-txn",
        linger_ms=0,
        max_batch_size=MatchingSettings().matching_max_batch_bytes,
        retry_backoff_ms=retry_ms,
    )
    await producer.start()
    value = b"x" * 300  # about an outcome's size
    out = []
    try:
        for i in range(rounds):
            started = time.perf_counter()
            await producer.begin_transaction()
            futures = []
            for p in range(PARTITIONS):
                builder = producer.create_batch()
                for _ in range(30):
                    builder.append(key=b"k", value=value, timestamp=None)
                futures.append(await producer.send_batch(builder, prefix + "market", partition=p))
            offsets = {TopicPartition(prefix + "orders", p): i + 1 for p in range(PARTITIONS)}
            await producer.send_offsets_to_transaction(offsets, prefix + "probe")
            await asyncio.gather(*futures)
            await producer.commit_transaction()
            out.append((time.perf_counter() - started) * 1000)
    finally:
        await producer.stop()
        set_add_partitions_backoff(0.02)  # aiokafka's own value
    return out


async def bench_transactions(bootstrap: str, prefix: str, rounds: int, repeats: int) -> dict:
    """aiokafka's retry waits (100 ms, 20 ms) against the service's, alternately,
    repeats times each; percentiles of the transaction time over all rounds but each
    run's first 20 (connections, coordinator lookups)."""
    await create_topics(bootstrap, prefix)
    s = MatchingSettings()
    variants = {
        "aiokafka_defaults": (100, 20.0),
        "service": (s.matching_retry_backoff_ms, s.matching_add_partitions_backoff_ms),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, backoffs in variants.items():
            got = await time_transactions(bootstrap, prefix, f"{name}-{r}", rounds, backoffs)
            times[name] += got[20:]
            say(f"transactions, {name}: p50 {statistics.median(got[20:]):.1f} ms")
    report = {}
    for name, ts in times.items():
        ts.sort()
        report[name] = {
            "retry_backoff_ms": variants[name][0],
            "add_partitions_backoff_ms": variants[name][1],
            "transactions": len(ts),
            "p50_ms": ts[len(ts) // 2],
            "p90_ms": ts[int(0.9 * len(ts))],
            "p99_ms": ts[int(0.99 * len(ts))],
        }
    return report


# -- main --------------------------------------------------------------------------------


async def bench(bootstrap: str, args) -> dict:
    run_id = f"bp{os.getpid()}x{int(time.time()) % 100000}"
    if args.txn_rounds:
        return {
            "transactions": await bench_transactions(
                bootstrap, f"{run_id}.txn.", args.txn_rounds, 2
            )
        }
    if args.latency_only:
        latency = await measure_latency(bootstrap, run_id, args)
        return {"p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"], "latency": latency}
    source = f"{run_id}.src."
    await create_topics(bootstrap, source)
    say(f"generating {args.commands:,} freight-mix commands (seed {SEED})")
    commands = workloads.freight_mix(args.commands, SEED)
    say("preloading orders")
    preload_s = await preload(bootstrap, source + "orders", commands)
    del commands
    end = await end_offsets(bootstrap, source + "orders")
    say(f"preloaded {sum(end.values()):,} records in {preload_s:.1f} s")
    report: dict = {"commands": args.commands, "preload_s": preload_s}

    sweep = {}
    if args.sweep:
        for batch in (250, 500, 1000, 2000, 5000):
            for linger in (0, 2, 10):
                a = argparse.Namespace(**{**vars(args), "batch": batch, "linger_ms": linger})
                prefix = f"{run_id}.s{batch}l{linger}."
                await create_topics(bootstrap, prefix)
                elapsed = await run_passthrough(bootstrap, source, prefix, a, end)
                sweep[f"passthrough_b{batch}_l{linger}"] = args.commands / elapsed
                say(
                    f"sweep: passthrough batch {batch} linger {linger} ms: "
                    f"{args.commands / elapsed:,.0f} msgs/s"
                )
        report["sweep_passthrough_msgs_per_s"] = sweep

    if args.broker_warmup_s > 0:
        # A broker just started runs its first transactions cold (see measure_latency);
        # without this pass the passthrough, timed first, would pay for it alone.
        say("warm-up: one passthrough pass over the preloaded log (not timed)")
        await create_topics(bootstrap, f"{run_id}.warm.pt.")
        await run_passthrough(bootstrap, source, f"{run_id}.warm.pt.", args, end)

    say(f"passthrough: batch {args.batch}, linger {args.linger_ms} ms")
    out = f"{run_id}.pt."
    await create_topics(bootstrap, out)
    cpu = time.process_time()
    passthrough_s = await run_passthrough(bootstrap, source, out, args, end)
    passthrough_cpu_s = time.process_time() - cpu
    say(f"passthrough: {args.commands / passthrough_s:,.0f} msgs/s ({passthrough_s:.1f} s)")

    say(f"pipeline: batch {args.batch}, linger {args.linger_ms} ms")
    cpu = time.process_time()
    pipeline_s, events = await run_pipeline(bootstrap, source, args, end)
    pipeline_cpu_s = time.process_time() - cpu
    say(
        f"pipeline: {args.commands / pipeline_s:,.0f} commands/s ({pipeline_s:.1f} s, "
        f"{events:,} events)"
    )
    report.update(
        {
            "pipeline_cmds_per_s": args.commands / pipeline_s,
            "pipeline_events_per_s": events / pipeline_s,
            "events": events,
            "passthrough_msgs_per_s": args.commands / passthrough_s,
            # Per second of this process's CPU: what a quiet core would give, broker aside.
            "pipeline_cmds_per_cpu_s": args.commands / pipeline_cpu_s,
            "passthrough_msgs_per_cpu_s": args.commands / passthrough_cpu_s,
            "batch_records_max": args.batch,
            "linger_ms": args.linger_ms,
        }
    )
    report["ratio"] = report["pipeline_cmds_per_s"] / report["passthrough_msgs_per_s"]

    latency = await measure_latency(bootstrap, run_id, args)
    report["p50_ms"] = latency["p50_ms"]
    report["p99_ms"] = latency["p99_ms"]
    report["latency"] = latency
    if args.snapshot_orders:
        report["snapshot"] = await bench_snapshots(
            bootstrap, f"{run_id}.snap.", args.snapshot_orders
        )
        say(f"snapshot: {report['snapshot']}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 commands, 10 s of latency")
    parser.add_argument("--commands", type=int, default=None)
    parser.add_argument("--rate", type=int, default=10_000, help="latency: commands/s offered")
    parser.add_argument("--seconds", type=float, default=None, help="latency: duration")
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="latency: seconds left out at the start"
    )
    parser.add_argument(
        "--broker-warmup-s",
        type=float,
        default=None,
        help="latency: a whole run of this many seconds first, not measured (default 120 "
        "with the benchmark's own broker, 0 with --bootstrap or --quick)",
    )
    parser.add_argument("--batch", type=int, default=MatchingSettings().matching_batch_records_max)
    parser.add_argument("--linger-ms", type=int, default=MatchingSettings().matching_linger_ms)
    parser.add_argument("--sweep", action="store_true", help="passthrough by batch and linger")
    parser.add_argument(
        "--tick-ms", type=float, default=5.0, help="latency: the generator's send interval"
    )
    parser.add_argument(
        "--reader-wait-ms", type=int, default=20, help="latency: the reader's fetch_max_wait_ms"
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="latency: an environment setting of the service process (e.g. "
        "WLEX_MATCHING_POLL_TIMEOUT_MS=5); repeatable",
    )
    parser.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        help="latency: the tree the service process runs from (a copy of another commit, "
        "for before/after runs on the same broker)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the latency run (for a latency-against-rate curve)",
    )
    parser.add_argument(
        "--snapshot-orders",
        type=int,
        default=0,
        help="also time snapshot and restore of this many resting orders",
    )
    parser.add_argument(
        "--txn-rounds",
        type=int,
        default=0,
        help="only time this many back-to-back transactions, aiokafka's retry waits "
        "against the service's, alternately",
    )
    parser.add_argument("--bootstrap", default="", help="an outside broker instead of our own")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.commands = args.commands or (20_000 if args.quick else 500_000)
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    if args.quick:
        args.warmup_s = min(args.warmup_s, 2.0)
    if args.broker_warmup_s is None:
        args.broker_warmup_s = 0.0 if args.quick or args.bootstrap else 120.0

    started = time.perf_counter()
    stack = None
    bootstrap = args.bootstrap
    if not bootstrap:
        stack = start_own_stack(Path(tempfile.mkdtemp(prefix="wlex-bench-pipeline-")))
        bootstrap = stack.kafka_bootstrap
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(bench(bootstrap, args))
    finally:
        if stack is not None:
            stack.down()
    report["targets"] = check_targets(report, TARGETS)
    report["duration_s"] = time.perf_counter() - started
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["machine"] = machine()  # the load average at the end of the run
    report["commit"] = commit()
    report["command"] = "python -m loadtests.bench_pipeline " + " ".join(argv or sys.argv[1:])
    if (args.latency_only or args.txn_rounds) and args.out.exists():
        # A partial run: keep the other figures of the file, the throughput ones marked
        # with the run they come from.
        previous = orjson.loads(args.out.read_bytes())
        report = {
            **{k: v for k, v in previous.items() if k not in report and k != "throughput_run"},
            **report,
            "throughput_run": previous.get("throughput_run")
            or {k: previous.get(k) for k in ("date", "commit", "command")},
        }
        report["targets"] = check_targets(report, TARGETS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    say(f"written {args.out}")
    for key, t in report["targets"].items():
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:,.2f}"
        say(f"  {key:<22} {value:>12}  {t['target']:<10} {verdict}")
    return report


if __name__ == "__main__":
    main()
