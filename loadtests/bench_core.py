"""Benchmark of the matching core: `python -m loadtests.bench_core` (also `make bench`).

Three measures, all in this one process, one after the other:
- price-only: the same orders through Engine.process (batches of commands), through the
  order-book libraries of loadtests.peers (as unit limit orders) and through MinimalBook
  below, the pure-Python ceiling. Every contender must report the same number of trades.
- freight: the realistic mix of loadtests.workloads.freight_mix through Engine.process.
- memory: bytes per resting order once many non-crossing orders rest in the engine.

Each measure runs the Python engine (engine.py, the reference: the historical keys
price_only_ops_per_s, freight_ops_per_s, ratio_vs_*, bytes_per_resting_order) and the
native engine (native_engine.py, what the service runs: the native_* keys) on the same
command dicts in the same run. The native headline is `process_encoded`: command dicts
in, as issue 3 feeds "Engine.process in batches of 1,000 commands" and as the peers get
their orders ready-made; (key, value) bytes per event out, as the service writes them.
Beside it: `native_*_process_ops_per_s` is `process` (dicts out: the tests' call), and
`native_raw_*_ops_per_s` is `process_raw` on the same commands pre-encoded with orjson
(outside the timing): Kafka value bytes in, the service's real input and call, which
includes the JSON parsing the dict figures leave out;
`native_service_path_before_*` is what the service did before process_raw (orjson
decode + envelope validation + process_encoded, one run). The targets are checked on
the headline. Native memory is measured by RSS (tracemalloc does not see Rust's allocator).

Timing: time.perf_counter around the feeding loop only (workload generation and batch
slicing happen before), best of --reps runs, each on a fresh book. Before every timed run
the garbage collector is collected and then frozen (gc.freeze), so the workload, which the
benchmark holds and production never would, is not re-scanned by the cyclic collector;
the collector stays enabled for what the contender allocates. Every contender runs under
these same conditions. The engine's events are dropped once each batch returns, as the
service drops them once encoded (and as the envelope book below does): kept for the
whole run, a million commands' events would be walked again by every full collection,
a cost of the benchmark, not of the engine. The events are counted in one more, untimed
run (the engine is deterministic, so it gives the same events).

The two ratios of the targets (native_ratio_vs_best_peer, native_ratio_vs_minimal_book)
come from a race: the native headline, the minimal book and the three fastest peers, run
round by round (`race`), so that both sides of a ratio meet the machine's same moments.

Writes loadtests/results/bench_core.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import heapq
import json
import platform
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from loadtests import workloads
from loadtests.peers import load_peers
from loadtests.report import check_targets, commit, machine

RESULTS = Path(__file__).parent / "results" / "bench_core.json"
SEED = 20260302  # the workloads' seed
BATCH = 1_000  # commands per Engine.process call
RACE_ROUNDS = 5  # rounds of the race that gives the ratios (see race)
RACED_PEERS = 3  # the fastest peers of the sequential runs, raced against the engine

TARGETS = {  # the targets on the 2-core reference machine, for the engine the
    # service runs (the native one)
    "native_ratio_vs_best_peer": (">=", 1.5),
    "native_ratio_vs_minimal_book": (">=", 0.6),
    "native_freight_ops_per_s": (">=", 300_000),
    "native_bytes_per_resting_order": ("<=", 400),
}

FULL = {"price_only_n": 200_000, "freight_n": 1_000_000, "resting_n": 1_000_000}
QUICK = {"price_only_n": 4_000, "freight_n": 10_000, "resting_n": 10_000}


class MinimalBook:
    """Price-time priority for unit limit orders, and nothing else: the ceiling of what
    pure Python does per order. A heap of prices per side, a FIFO per price."""

    __slots__ = ("bid_prices", "ask_prices", "bids", "asks", "trades")

    def __init__(self) -> None:
        self.bid_prices: list[int] = []  # negated, so the heap's top is the highest bid
        self.ask_prices: list[int] = []
        self.bids: dict[int, deque] = {}  # price -> order numbers in arrival order
        self.asks: dict[int, deque] = {}
        self.trades = 0

    def buy(self, no: int, price: int) -> None:
        asks = self.ask_prices
        if asks and asks[0] <= price:
            best = asks[0]
            level = self.asks[best]
            level.popleft()
            if not level:
                heapq.heappop(asks)
                del self.asks[best]
            self.trades += 1
            return
        rest = self.bids.get(price)
        if rest is None:
            rest = self.bids[price] = deque()
            heapq.heappush(self.bid_prices, -price)
        rest.append(no)

    def sell(self, no: int, price: int) -> None:
        bids = self.bid_prices
        if bids and -bids[0] >= price:
            best = -bids[0]
            level = self.bids[best]
            level.popleft()
            if not level:
                heapq.heappop(bids)
                del self.bids[best]
            self.trades += 1
            return
        rest = self.asks.get(price)
        if rest is None:
            rest = self.asks[price] = deque()
            heapq.heappush(self.ask_prices, price)
        rest.append(no)


def run_minimal_book(orders: list[tuple[bool, int, int]]) -> int:
    book = MinimalBook()
    buy, sell = book.buy, book.sell
    for is_buy, no, price in orders:
        if is_buy:
            buy(no, price)
        else:
            sell(no, price)
    return book.trades


def run_envelope_book(batches: list[list[dict]]) -> int:
    """MinimalBook behind the engine's interface: reads each command envelope (no
    validation) and appends one outcome envelope (deal.made or *.rested) per command.
    What this gets per second bounds any pure-Python engine that takes and gives dicts."""
    book = MinimalBook()
    buy, sell = book.buy, book.sell
    trades = 0
    for batch in batches:
        out = []
        for cmd in batch:
            cid, data = cmd["id"], cmd["data"]
            before = book.trades
            if cmd["type"] == "load.post":
                ref = data["load_id"]
                buy(cmd["ts"], data["limit_fen"])
                typ = "deal.made" if book.trades > before else "load.rested"
            else:
                ref = data["offer_id"]
                sell(cmd["ts"], data["ask_fen"])
                typ = "deal.made" if book.trades > before else "offer.rested"
            out.append({"id": f"{cid}:0", "type": typ, "v": 1, "ts": cmd["ts"], "key": cmd["key"],
                        "source": "matching", "cause": cid, "data": {"ref_id": ref}})  # fmt: skip
        trades += sum(1 for e in out if e["type"] == "deal.made")
    return trades


def engine_class():
    from services.matching.engine import Engine

    return Engine


def native_class():
    from services.matching.native_engine import NativeEngine

    return NativeEngine


def run_engine(batches: list[list[dict]], cls: type | None = None, encoded: bool = False):
    """Feed every batch to a new engine (of `cls`, default the Python one); each batch's
    events are dropped as soon as it returns. `encoded`: call process_encoded (bytes
    out, as the service does) instead of process. Returns the engine."""
    engine = (cls or engine_class())()  # imported before any timed run: see main
    process = engine.process_encoded if encoded else engine.process
    for batch in batches:
        process(batch)
    return engine


def engine_events(batches: list[list[dict]], cls: type | None = None) -> list[dict]:
    """Every event of one run, for counting (untimed)."""
    engine = (cls or engine_class())()
    return [e for batch in batches for e in engine.process(batch)]


def bench_native(batches: list[list[dict]], reps: int, n: int, expected: Counter) -> dict:
    """The native engine on the same batches: process_encoded (the headline), process,
    process_encoded with the gc off, and process_raw on the same commands encoded with
    orjson beforehand (the service's input: Kafka value bytes); its event counts must
    equal the Python engine's (`expected`). `service_path_ops_per_s` is what the service
    did before process_raw: decode + envelope validation + process_encoded."""
    import orjson

    from services.common.envelope import decode
    from services.matching.engines import event_type
    from services.matching.envelope_check import validate_envelope

    native = native_class()
    engine = native()
    events = Counter(event_type(v) for batch in batches for _, v in engine.process_encoded(batch))
    if events != expected:
        raise SystemExit(f"native events {dict(events)} differ from Python's {dict(expected)}")
    raw = [[orjson.dumps(c) for c in batch] for batch in batches]  # outside the timing
    fallbacks = 0

    def fallback(value, i):  # the service's: decode, validate (none is a dead letter here)
        nonlocal fallbacks
        fallbacks += 1
        envelope = decode(value)
        validate_envelope(envelope)
        return envelope

    def run_raw():
        engine = native()
        for batch in raw:
            engine.process_raw(batch, fallback)
        return engine

    def run_service_path():
        engine = native()
        for batch in raw:
            commands = [decode(value) for value in batch]
            for c in commands:
                validate_envelope(c)
            engine.process_encoded(commands)
        return engine

    raw_engine = native()
    raw_events = Counter(
        event_type(v) for batch in raw for _, v in raw_engine.process_raw(batch, fallback)
    )
    del raw_engine
    if raw_events != expected:
        raise SystemExit(f"process_raw events {dict(raw_events)} differ: {dict(expected)}")
    seconds, _ = best_of(reps, lambda: run_engine(batches, native, encoded=True))
    seconds_process, _ = best_of(reps, lambda: run_engine(batches, native))
    seconds_gc_off, _ = best_of(
        reps, lambda: run_engine(batches, native, encoded=True), gc_on=False
    )
    seconds_raw, _ = best_of(reps, run_raw)
    seconds_service, _ = best_of(1, run_service_path)
    return {"ops_per_s": n / seconds, "seconds": seconds,
            "process_ops_per_s": n / seconds_process,
            "ops_per_s_gc_off": n / seconds_gc_off,
            "raw_ops_per_s": n / seconds_raw, "raw_seconds": seconds_raw,
            "raw_fallbacks": fallbacks,
            "service_path_ops_per_s": n / seconds_service,
            "events": dict(events)}  # fmt: skip


def best_of(reps: int, run: Callable[[], object], *, gc_on: bool = True) -> tuple[float, object]:
    """(best seconds, result of the last run) over reps runs of run(). gc_on=False runs
    with the cyclic collector disabled: what the engine costs without it."""
    best, result = float("inf"), None
    for _ in range(reps):
        result = None  # drop the previous run's state before the next one starts
        gc.collect()
        gc.freeze()
        if not gc_on:
            gc.disable()
        t0 = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - t0
        gc.enable()
        gc.unfreeze()
        best = min(best, elapsed)
    return best, result


def race(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best seconds of each contender over `rounds` rounds, each round running every
    contender once (the order rotated round by round), under best_of's conditions.

    On a shared machine the load changes within minutes: timed one after the other, a
    ratio compares two moments as much as two programs. Raced round by round, both sides
    of a ratio meet the same moments."""
    names = list(contenders)
    best = dict.fromkeys(names, float("inf"))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, _ = best_of(1, contenders[name])
            best[name] = min(best[name], seconds)
    return best


def batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the three measures --------------------------------------------------------------


def bench_price_only(n: int, seed: int, reps: int, batch: int, peer_names: list[str] | None):
    say(f"price-only: generating {n:,} orders (seed {seed})")
    orders = workloads.price_only_orders(n, seed)
    batches = batched(workloads.price_only(n, seed), batch)
    result: dict = {"orders": n, "batch_commands": batch}

    say("price-only: engine")
    seconds, _ = best_of(reps, lambda: run_engine(batches))
    events = Counter(e["type"] for e in engine_events(batches))
    trades = events["deal.made"]
    result["engine"] = {"ops_per_s": n / seconds, "seconds": seconds, "trades": trades,
                        "events": dict(events)}  # fmt: skip

    say("price-only: engine, cyclic gc disabled")
    seconds_gc_off, _ = best_of(reps, lambda: run_engine(batches), gc_on=False)
    result["engine"]["ops_per_s_gc_off"] = n / seconds_gc_off

    say("price-only: native engine (process_encoded, process, process_raw)")
    result["native"] = bench_native(batches, reps, n, events)

    say("price-only: minimal book")
    seconds, minimal_trades = best_of(reps, lambda: run_minimal_book(orders))
    result["minimal_book"] = {
        "ops_per_s": n / seconds,
        "seconds": seconds,
        "trades": minimal_trades,
    }

    say("price-only: minimal book behind the engine's envelope interface")
    seconds, envelope_trades = best_of(reps, lambda: run_envelope_book(batches))
    result["envelope_book"] = {
        "ops_per_s": n / seconds,
        "seconds": seconds,
        "trades": envelope_trades,
    }

    runs, unavailable = load_peers(peer_names)
    peers = {}
    for name, run in runs.items():
        say(f"price-only: peer {name}")
        try:
            seconds, peer_trades = best_of(reps, lambda run=run: run(orders))
        except Exception as e:  # a library that breaks on this workload is reported, not hidden
            unavailable[name] = f"failed on the workload: {type(e).__name__}: {e}"
            continue
        peers[name] = {"ops_per_s": n / seconds, "seconds": seconds, "trades": peer_trades}
    result["peers"] = peers
    result["peers_unavailable"] = unavailable

    disagree = {k: v["trades"] for k, v in peers.items() if v["trades"] != trades}
    if minimal_trades != trades:
        disagree["minimal_book"] = minimal_trades
    if envelope_trades != trades:
        disagree["envelope_book"] = envelope_trades
    if disagree:
        raise SystemExit(f"trade counts disagree: engine {trades}, others {disagree}")
    result["trades"] = trades

    # The ratios' figures: the native headline, the minimal book and the peers that can
    # be best (the RACED_PEERS fastest above), raced round by round.
    fastest = sorted(peers, key=lambda k: peers[k]["ops_per_s"], reverse=True)[:RACED_PEERS]
    say(f"price-only: race of the native engine, the minimal book and {', '.join(fastest)}"
        f" ({RACE_ROUNDS} rounds)")  # fmt: skip
    native = native_class()
    contenders = {"native": lambda: run_engine(batches, native, encoded=True),
                  "minimal_book": lambda: run_minimal_book(orders),
                  **{name: (lambda run=runs[name]: run(orders)) for name in fastest}}  # fmt: skip
    best = race(contenders, RACE_ROUNDS)
    result["race"] = {"rounds": RACE_ROUNDS,
                      "ops_per_s": {name: n / seconds for name, seconds in best.items()}}  # fmt: skip
    return result


def bench_price_only_batches(n: int, seed: int, sizes: list[int]) -> dict[str, float]:
    """Engine ops/s by batch size (one run each): what batching buys per call."""
    commands = workloads.price_only(n, seed)
    sweep = {}
    for size in sizes:
        say(f"price-only: engine, batches of {size}")
        batches = batched(commands, size)
        seconds, _ = best_of(1, lambda batches=batches: run_engine(batches))
        sweep[str(size)] = n / seconds
    return sweep


def bench_freight(n: int, seed: int, reps: int, batch: int) -> dict:
    say(f"freight: generating {n:,} commands (seed {seed})")
    t0 = time.perf_counter()
    commands = workloads.freight_mix(n, seed)
    generated_s = time.perf_counter() - t0
    batches = batched(commands, batch)
    del commands
    say(f"freight: engine ({generated_s:.1f} s to generate)")
    seconds, _ = best_of(reps, lambda: run_engine(batches))
    outs = engine_events(batches)
    events = Counter(e["type"] for e in outs)
    reasons = Counter(e["data"]["reason"] for e in outs if e["type"] == "order.rejected")
    del outs
    say("freight: engine, cyclic gc disabled")
    seconds_gc_off, _ = best_of(reps, lambda: run_engine(batches), gc_on=False)
    say("freight: native engine (process_encoded, process, process_raw)")
    native = bench_native(batches, reps, n, events)
    return {"ops_per_s_gc_off": n / seconds_gc_off, "commands": n, "batch_commands": batch, "ops_per_s": n / seconds, "seconds": seconds,
            "events": dict(events), "rejected_by_reason": dict(reasons), "native": native}  # fmt: skip


def _rest(n: int, seed: int, batch: int, cls: type | None = None):
    """Feed n non-crossing orders to a new engine, a batch at a time, dropping each batch
    once processed: what stays allocated is the engine's state (with the strings it keeps
    from the commands), as in production where the consumer's batches come and go."""
    engine = (cls or engine_class())()
    rested = 0
    commands = workloads.iter_resting(n, seed)
    while True:
        chunk = [c for _, c in zip(range(batch), commands, strict=False)]
        if not chunk:
            break
        for e in engine.process(chunk):
            rested += e["type"] in ("load.rested", "offer.rested")
    return engine, rested


def bench_native_memory(n: int, seed: int, batch: int) -> dict:
    """Bytes per resting order of the native engine: RSS growth over the build, divided
    by n (its state is Rust memory, which tracemalloc does not see). Run first, on a
    fresh heap, so the growth is the engine's and not reuse of freed Python memory."""
    import psutil

    proc = psutil.Process()
    say(f"memory: resting {n:,} orders in the native engine (RSS)")
    gc.collect()
    rss0 = proc.memory_info().rss
    engine, rested = _rest(n, seed, batch, native_class())
    gc.collect()
    rss1 = proc.memory_info().rss
    if rested != n or engine.order_counts()[0] != n:
        raise SystemExit(f"native memory workload: {rested} of {n} orders rested")
    del engine
    return {"resting_orders": n, "bytes_per_resting_order_rss": (rss1 - rss0) / n,
            "method": "RSS growth of the process while n non-crossing orders come to rest "
                      "(commands dropped batch by batch), divided by n"}  # fmt: skip


def bench_memory(n: int, seed: int, batch: int) -> dict:
    """Bytes per resting order, two ways.

    tracemalloc (the reported figure): the Python heap still allocated after n orders
    rest, less what was allocated before, divided by n. It counts exactly the objects the
    engine keeps, whatever the allocator does with freed memory, so it is stable from run
    to run and comparable between engine versions.
    RSS (for reference): growth of the process's resident memory over the same build, in a
    run without tracemalloc. It adds allocator overhead and pages kept from the freed
    batches, so it is higher and noisier; it is what the operating system sees.
    """
    import psutil

    proc = psutil.Process()
    say(f"memory: resting {n:,} orders (RSS)")
    gc.collect()
    rss0 = proc.memory_info().rss
    engine, rested = _rest(n, seed, batch)
    gc.collect()
    rss1 = proc.memory_info().rss
    del engine
    gc.collect()
    if rested != n:
        raise SystemExit(f"memory workload: {rested} of {n} orders rested; they must not cross")

    say(f"memory: resting {n:,} orders (tracemalloc)")
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    engine, rested = _rest(n, seed, batch)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del engine
    return {
        "resting_orders": n,
        "lanes": workloads.RESTING_LANES,
        "bytes_per_resting_order": (after - before) / n,
        "bytes_per_resting_order_rss": (rss1 - rss0) / n,
        "method": "tracemalloc: Python heap retained by the engine after resting n "
                  "non-crossing orders (commands dropped batch by batch), divided by n",
    }  # fmt: skip


# -- report ----------------------------------------------------------------------------


def print_table(report: dict) -> None:
    po = report["price_only"]
    rows = [("wlex engine", po["engine"]["ops_per_s"], po["engine"]["trades"])]
    rows.append(
        (
            "minimal book (heapq+dict+deque)",
            po["minimal_book"]["ops_per_s"],
            po["minimal_book"]["trades"],
        )
    )
    rows.append(
        (
            "minimal book, envelopes in and out",
            po["envelope_book"]["ops_per_s"],
            po["envelope_book"]["trades"],
        )
    )
    for name, p in sorted(po["peers"].items(), key=lambda kv: -kv[1]["ops_per_s"]):
        rows.append((f"peer {name}", p["ops_per_s"], p["trades"]))
    rows.insert(0, ("wlex native engine, process_encoded", po["native"]["ops_per_s"], po["engine"]["trades"]))  # fmt: skip
    rows.insert(1, ("wlex native engine, process", po["native"]["process_ops_per_s"], po["engine"]["trades"]))  # fmt: skip
    rows.insert(2, ("wlex native engine, process_raw", po["native"]["raw_ops_per_s"], po["engine"]["trades"]))  # fmt: skip
    rows.insert(3, ("wlex native, decode+validate+encoded", po["native"]["service_path_ops_per_s"], po["engine"]["trades"]))  # fmt: skip
    print(f"\nprice-only: {po['orders']:,} orders on one lane, batches of {po['batch_commands']:,}")
    rows.insert(
        1, ("wlex engine, cyclic gc off", po["engine"]["ops_per_s_gc_off"], po["engine"]["trades"])
    )
    print(f"  {'contender':<36} {'ops/s':>12} {'trades':>8}")
    for name, ops, trades in rows:
        print(f"  {name:<36} {ops:>12,.0f} {trades:>8,}")
    for name, why in po["peers_unavailable"].items():
        print(f"  {'peer ' + name:<36} {'-':>12}  unavailable: {why[:70]}")
    race_ops = po["race"]["ops_per_s"]
    print(f"  raced round by round ({po['race']['rounds']} rounds, the ratios' figures): "
          + ", ".join(f"{k} {v:,.0f}" for k, v in race_ops.items()))  # fmt: skip
    if report.get("price_only_batch_sweep"):
        sweep = ", ".join(f"{k}: {v:,.0f}" for k, v in report["price_only_batch_sweep"].items())
        print(f"  engine ops/s by batch size: {sweep}")
    fr = report["freight"]
    print(
        f"\nfreight mix: {fr['commands']:,} commands: {fr['ops_per_s']:,.0f} ops/s "
        f"({fr['ops_per_s_gc_off']:,.0f} with the cyclic gc off)"
    )
    print(
        f"  native: {fr['native']['ops_per_s']:,.0f} ops/s process_encoded, "
        f"{fr['native']['process_ops_per_s']:,.0f} process, "
        f"{fr['native']['ops_per_s_gc_off']:,.0f} process_encoded with the gc off, "
        f"{fr['native']['raw_ops_per_s']:,.0f} process_raw (bytes in), "
        f"{fr['native']['service_path_ops_per_s']:,.0f} decode+validate+process_encoded"
    )
    print("  events: " + ", ".join(f"{k} {v:,}" for k, v in sorted(fr["events"].items())))
    print(
        "  rejected: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(fr["rejected_by_reason"].items()))
    )
    mem = report["memory"]
    print(f"\nmemory: {mem['resting_orders']:,} resting orders: "
          f"{mem['bytes_per_resting_order']:,.0f} B/order (tracemalloc), "
          f"{mem['bytes_per_resting_order_rss']:,.0f} B/order (RSS); native "
          f"{report['native_bytes_per_resting_order']:,.0f} B/order (RSS)")  # fmt: skip
    print("\ntargets:")
    for key, t in report["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:,.2f}"
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"  {key:<26} {value:>14}  {t['target']:<12} {verdict}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_core", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of a few seconds"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed runs per contender, best kept (3; quick 1)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--batch", type=int, default=BATCH, help="commands per Engine.process call")
    parser.add_argument("--price-only-n", type=int, default=None)
    parser.add_argument("--freight-n", type=int, default=None)
    parser.add_argument("--resting-n", type=int, default=None)
    parser.add_argument("--peers", default=None, help="comma-separated peer names (default: all)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    reps = args.reps or (1 if args.quick else 3)
    peer_names = args.peers.split(",") if args.peers else None

    started = time.perf_counter()
    engine_class()  # import outside the timed runs
    native_class()
    # Memory first, while the heap holds nothing else: freed workloads of the other phases
    # would otherwise be reused by the engine and hide its growth from the RSS figure.
    native_memory = bench_native_memory(sizes["resting_n"], args.seed, args.batch)
    memory = bench_memory(sizes["resting_n"], args.seed, args.batch)
    price_only = bench_price_only(sizes["price_only_n"], args.seed, reps, args.batch, peer_names)
    sweep = None
    if not args.no_sweep and not args.quick:
        sweep = bench_price_only_batches(
            sizes["price_only_n"], args.seed, [1, 10, 100, 1_000, 10_000]
        )
    freight = bench_freight(sizes["freight_n"], args.seed, reps, args.batch)

    engine_ops = price_only["engine"]["ops_per_s"]
    peers = {name: p["ops_per_s"] for name, p in price_only["peers"].items()}
    best_peer = max(peers, key=peers.get) if peers else None
    native_ops = price_only["native"]["ops_per_s"]
    raced = price_only["race"]["ops_per_s"]
    raced_peers = {k: v for k, v in raced.items() if k not in ("native", "minimal_book")}
    raced_best = max(raced_peers, key=raced_peers.get) if raced_peers else None
    report = {
        "native_price_only_ops_per_s": native_ops,
        "native_price_only_process_ops_per_s": price_only["native"]["process_ops_per_s"],
        "native_price_only_ops_per_s_gc_off": price_only["native"]["ops_per_s_gc_off"],
        "native_freight_ops_per_s": freight["native"]["ops_per_s"],
        "native_freight_process_ops_per_s": freight["native"]["process_ops_per_s"],
        "native_freight_ops_per_s_gc_off": freight["native"]["ops_per_s_gc_off"],
        "native_raw_price_only_ops_per_s": price_only["native"]["raw_ops_per_s"],
        "native_raw_freight_ops_per_s": freight["native"]["raw_ops_per_s"],
        "native_service_path_before_price_only_ops_per_s": price_only["native"]["service_path_ops_per_s"],
        "native_service_path_before_freight_ops_per_s": freight["native"]["service_path_ops_per_s"],
        # From the race (same rounds for both sides); the sequential figures are in
        # native_price_only_ops_per_s, peers and minimal_book_ops_per_s.
        "native_ratio_vs_best_peer": (raced["native"] / raced_peers[raced_best]
                                      if raced_best else None),
        "native_ratio_vs_minimal_book": raced["native"] / raced["minimal_book"],
        "native_race": {"best_peer": raced_best, **price_only["race"]},
        "native_bytes_per_resting_order": native_memory["bytes_per_resting_order_rss"],
        "native_memory": native_memory,
        "native_vs_python_freight": freight["native"]["ops_per_s"] / freight["ops_per_s"],
        "price_only_ops_per_s": engine_ops,
        "price_only_ops_per_s_gc_off": price_only["engine"]["ops_per_s_gc_off"],
        "freight_ops_per_s": freight["ops_per_s"],
        "freight_ops_per_s_gc_off": freight["ops_per_s_gc_off"],
        "peers": peers,
        "peers_unavailable": price_only["peers_unavailable"],
        "best_peer": best_peer,
        "ratio_vs_best_peer": engine_ops / peers[best_peer] if best_peer else None,
        "minimal_book_ops_per_s": price_only["minimal_book"]["ops_per_s"],
        "ratio_vs_minimal_book": engine_ops / price_only["minimal_book"]["ops_per_s"],
        "envelope_book_ops_per_s": price_only["envelope_book"]["ops_per_s"],
        "ratio_vs_envelope_book": engine_ops / price_only["envelope_book"]["ops_per_s"],
        "bytes_per_resting_order": memory["bytes_per_resting_order"],
        "bytes_per_resting_order_rss": memory["bytes_per_resting_order_rss"],
        "price_only_trades": price_only["trades"],
        "price_only": price_only,
        "price_only_batch_sweep": sweep,
        "freight": freight,
        "memory": memory,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "commit": commit(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m loadtests.bench_core", *(sys.argv[1:] if argv is None else argv)]),
        "params": {"seed": args.seed, "reps": reps, "batch_commands": args.batch, **sizes},
        "gc": "collected and frozen before each timed run, enabled during it",
        "outputs": "each batch's events dropped once Engine.process returns (counted in an "
                   "extra untimed run)",
        "wall_s": None,
    }  # fmt: skip
    report["targets"] = check_targets(report, TARGETS)
    report["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten {args.out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
