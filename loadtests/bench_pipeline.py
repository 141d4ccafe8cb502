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
    `--rate` commands/s for `--seconds` s, each command's ts set to the wall clock as it
    is sent; latency = when a read_committed consumer of `market` receives an outcome
    minus the ts of the command that caused it (clock-tick outcomes excluded; the first
    `--warmup-s` seconds excluded).

Starts its own broker (services.devenv.stack, free loopback ports) unless --bootstrap
is given, so it never touches a running demo. Writes loadtests/results/bench_pipeline.json.

    python -m loadtests.bench_pipeline [--quick] [--sweep]
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
    transactional_id_for,
)
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
    txn_id = transactional_id_for("passthrough", orders, range(PARTITIONS))
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

    pipeline = Pipeline(
        consumer=consumer,
        new_producer=lambda: make_producer(
            bootstrap,
            transactional_id=txn_id,
            client_id="passthrough",
            linger_ms=args.linger_ms,
            max_batch_size=MatchingSettings().matching_max_batch_bytes,
        ),
        transform=transform,
        out_topic=out_prefix + "market",
        group_id=group,
        dlq_topic=out_prefix + "dlq",
        source="passthrough",
        validate=None,
        batch_records_max=args.batch,
        on_start=on_start,
        on_commit=on_commit,
    )
    return await _timed(pipeline.run(stop), done, ready, stop, "passthrough")


# -- latency -----------------------------------------------------------------------------


async def run_latency(bootstrap: str, prefix: str, args) -> dict:
    """The service as a process; commands at args.rate/s for args.seconds s."""
    await create_topics(bootstrap, prefix)
    n = int(args.rate * args.seconds)
    now_ms = int(time.time() * 1000)
    commands = workloads.freight_mix(n, SEED + 1, start_ms=now_ms, id_prefix="lat")
    # Done before the clock starts: the partitioner (pure Python murmur2) and the ids.
    placed = [keyed(c) for c in commands]
    ids = [c["id"].encode() for c in commands]
    by_id: dict[bytes, int] = {}
    env = dict(
        os.environ,
        WLEX_KAFKA_BOOTSTRAP=bootstrap,
        WLEX_TOPIC_PREFIX=prefix,
        WLEX_SERVICE_NAME="matching",
        WLEX_HTTP_PORT="0",
        WLEX_MATCHING_BATCH_RECORDS_MAX=str(args.batch),
        WLEX_MATCHING_LINGER_MS=str(args.linger_ms),
    )
    log_path = Path(tempfile.gettempdir()) / f"bench_pipeline_matching_{os.getpid()}.log"
    with log_path.open("wb") as log:
        # Popen returns once the child is forked: no wait worth a thread.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "services.matching"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    latencies: list[float] = []
    try:
        reader = AIOKafkaConsumer(
            prefix + "market",
            bootstrap_servers=bootstrap,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
        await reader.start()
        await wait_log(log_path, "recovered", proc, 60)
        say(f"latency: service ready; offering {args.rate:,} commands/s for {args.seconds} s")
        producer = make_producer(bootstrap, client_id="bench-offer", linger_ms=0)
        await producer.start()
        warmup_until_ms = None
        sent = received = 0

        async def offer():
            nonlocal sent, warmup_until_ms
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tick_s = 0.005  # a burst every 5 ms
            per_tick = args.rate * tick_s
            i = 0
            due = 0.0
            warmup_until_ms = int(time.time() * 1000) + int(args.warmup_s * 1000)
            while i < n:
                due += per_tick
                k = min(n, int(due))
                by_partition: dict[int, list] = {}
                ts = int(time.time() * 1000)
                for j in range(i, k):
                    c = commands[j]
                    c["ts"] = ts
                    by_id[ids[j]] = ts
                    key, p = placed[j]
                    by_partition.setdefault(p, []).append((key, encode(c)))
                sent += k - i
                i = k
                for p, records in by_partition.items():
                    b = producer.create_batch()
                    for key, value in records:
                        b.append(key=key, value=value, timestamp=None)
                    await producer.send_batch(b, prefix + "orders", partition=p)
                t0 += tick_s
                delay = t0 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

        async def receive(stop: asyncio.Event):
            nonlocal received
            while not stop.is_set():
                fetched = await reader.getmany(timeout_ms=50)
                now = time.time() * 1000
                for records in fetched.values():
                    for r in records:
                        # An outcome's id is its command's id + ":" + index, and comes
                        # first: slicing it out is ~50x cheaper than decoding the JSON,
                        # and this process must keep up with the service.
                        v = r.value
                        ts = by_id.get(v[7 : v.index(b'"', 7)].rpartition(b":")[0])
                        received += 1
                        if ts is not None and ts >= warmup_until_ms:
                            latencies.append(now - ts)

        stop = asyncio.Event()
        receiver = asyncio.create_task(receive(stop))
        started = time.perf_counter()
        await offer()
        offered_s = time.perf_counter() - started
        # The tail: until the outcomes stop coming for 3 s (bounded at 120 s), so a
        # service that fell behind shows its backlog in the percentiles rather than
        # having it cut off.
        tail_deadline = time.monotonic() + 120
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < tail_deadline and time.monotonic() - quiet_since < 3.0:
            await asyncio.sleep(0.5)
            if received != last:
                last, quiet_since = received, time.monotonic()
        stop.set()
        await receiver
        await producer.stop()
        await reader.stop()
    finally:
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
        "achieved_cmds_per_s": sent / offered_s,
        "seconds": args.seconds,
        "warmup_s": args.warmup_s,
        "commands": sent,
        "outcomes_received": received,
        "outcomes_measured": len(latencies),
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": latencies[-1],
        "mean_ms": statistics.fmean(latencies),
    }


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


# -- main --------------------------------------------------------------------------------


async def bench(bootstrap: str, args) -> dict:
    run_id = f"bp{os.getpid()}x{int(time.time()) % 100000}"
    if args.latency_only:
        latency = await run_latency(bootstrap, f"{run_id}.lat.", args)
        say(
            f"latency at {args.rate:,}/s: p50 {latency['p50_ms']:.1f} ms, "
            f"p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
        )
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

    latency = await run_latency(bootstrap, f"{run_id}.lat.", args)
    say(
        f"latency at {args.rate:,}/s: p50 {latency['p50_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
    )
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
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=MatchingSettings().matching_batch_records_max)
    parser.add_argument("--linger-ms", type=int, default=MatchingSettings().matching_linger_ms)
    parser.add_argument("--sweep", action="store_true", help="passthrough by batch and linger")
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
    parser.add_argument("--bootstrap", default="", help="an outside broker instead of our own")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.commands = args.commands or (20_000 if args.quick else 500_000)
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    if args.quick:
        args.warmup_s = min(args.warmup_s, 2.0)

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
