"""The matching core compiled with mypyc against the interpreted one, in one process:
`python -m loadtests.bench_core_mypyc` (needs the `bench` extra: mypy brings mypyc).

What it does, in order:
1. Build: copies services/matching/{orders,book,timers,commands,snapshot,engine}.py into a
   temporary directory as the package `wlex_mypyc` (imports renamed, nothing else), adds
   bench_core's MinimalBook and envelope book as `wlex_mypyc.floor`, and compiles them
   all with mypyc (opt level 3). Nothing is written to the work tree but the result
   file; the service never imports the compiled modules.
2. Checks the compiled engine is the same engine: tests/unit/matching runs against the
   compiled modules (put in place of services.matching.* in sys.modules, in a pytest
   subprocess), and both engines process the whole price-only and freight workloads batch
   by batch and must give the same orjson bytes for every batch and the same snapshot.
3. Times both engines interleaved under bench_core's conditions (best of --reps, gc
   collected and frozen before each run, enabled during it, each batch's events dropped
   on return), and the same with the cyclic gc disabled.
4. Splits the cost of a command by ablation, for both engines: the same run with every
   handler replaced by a no-op (envelope decode, clock, timer test), then by the
   command's parser alone (+ validation), then the full engine; event construction is
   timed apart (the same dict literals from precomputed values, less the same loop
   building nothing) and the rest is book, timers and state. No profiler runs, so nothing
   inflates small functions.
5. Times the floors on the price-only orders: MinimalBook and the envelope book,
   interpreted and compiled, and the best peer (kautenja-limit-order-book).

Writes loadtests/results/bench_core_mypyc.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from loadtests import bench_core, workloads
from loadtests.peers import load_peers
from loadtests.report import ROOT, commit, machine

RESULTS = Path(__file__).parent / "results" / "bench_core_mypyc.json"
PACKAGE = "wlex_mypyc"
MODULES = ("orders", "book", "timers", "commands", "snapshot", "engine")
BEST_PEER = "kautenja-limit-order-book"

_SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="{package}",
    packages=["{package}"],
    ext_modules=mypycify({paths!r}, opt_level="3"),
)
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- build -----------------------------------------------------------------------------


def build(dest: Path) -> float:
    """Compile the engine modules and the floors into dest/wlex_mypyc; seconds taken."""
    try:
        import mypyc  # noqa: F401
    except ImportError as e:
        raise SystemExit("mypyc is not installed: pip install -e '.[bench]'") from e
    pkg = dest / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    matching = ROOT / "services" / "matching"
    for name in MODULES:
        src = (matching / f"{name}.py").read_text()
        (pkg / f"{name}.py").write_text(re.sub(r"\bservices\.matching\b", PACKAGE, src))
    floor = "\n\n".join(
        [
            "from __future__ import annotations\n\nimport heapq\nfrom collections import deque",
            inspect.getsource(bench_core.MinimalBook),
            inspect.getsource(bench_core.run_minimal_book),
            inspect.getsource(bench_core.run_envelope_book),
        ]
    )
    (pkg / "floor.py").write_text(floor + "\n")
    paths = [f"{PACKAGE}/{name}.py" for name in (*MODULES, "floor")]
    (dest / "setup.py").write_text(_SETUP.format(package=PACKAGE, paths=paths))
    t0 = time.perf_counter()
    # MYPYPATH: the engine still imports services.common.reasons from the work tree.
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"mypyc build failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - t0


# Run in a subprocess: the compiled modules stand in for services.matching.* before pytest
# imports the tests, so every test of the engine runs against them.
_TEST_SHIM = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
import services.matching
for name in {modules!r}:
    m = importlib.import_module("{package}." + name)
    assert m.__file__.endswith(".so"), m.__file__
    sys.modules["services.matching." + name] = m
    setattr(services.matching, name, m)
import pytest
sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "tests/unit/matching"]))
"""


def unit_tests(dest: Path) -> str:
    """tests/unit/matching against the compiled modules: pytest's summary line, or
    SystemExit if anything failed."""
    shim = _TEST_SHIM.format(modules=MODULES, package=PACKAGE)
    done = subprocess.run([sys.executable, "-c", shim, str(dest)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0:
        raise SystemExit(f"unit tests fail against the compiled engine:\n{done.stdout[-4000:]}")
    return summary


def load_compiled(dest: Path):
    """(engine module, commands module, floor module) of the compiled package."""
    sys.path.insert(0, str(dest))
    modules = [
        importlib.import_module(f"{PACKAGE}.{name}") for name in ("engine", "commands", "floor")
    ]
    for m in modules:
        if not m.__file__.endswith(".so"):
            raise SystemExit(f"{m.__name__} was not compiled: {m.__file__}")
    return modules


# -- measures --------------------------------------------------------------------------


def same_outputs(batches: list[list[dict]], py_cls: type, c_cls: type) -> int:
    """Both engines over every batch: identical bytes per batch and identical snapshots at
    the end, or SystemExit. Returns the number of events."""
    a, b = py_cls(), c_cls()
    events = 0
    for i, batch in enumerate(batches):
        got, want = orjson.dumps(b.process(batch)), orjson.dumps(a.process(batch))
        if got != want:
            raise SystemExit(f"compiled engine differs from the interpreted one at batch {i}")
        events += want.count(b'"source":"matching"')
    if a.snapshot() != b.snapshot():
        raise SystemExit("compiled engine's snapshot differs from the interpreted one's")
    if c_cls.restore(a.snapshot()).snapshot() != a.snapshot():
        raise SystemExit("compiled engine does not restore the interpreted one's snapshot")
    return events


def _noop(data, out, base, cid, key) -> None:
    return None


def _parsers(commands) -> dict:
    """Handlers that only validate, with the parsers of `commands` (compiled or not)."""
    pair = commands.parse_pair
    return {
        "load.post": lambda d, o, b, c, k: commands.parse_load_post(d),
        "offer.post": lambda d, o, b, c, k: commands.parse_offer_post(d),
        "bid.place": lambda d, o, b, c, k: commands.parse_bid_place(d),
        "load.cancel": lambda d, o, b, c, k: pair(d, "load_id", "shipper_id"),
        "offer.cancel": lambda d, o, b, c, k: pair(d, "offer_id", "carrier_id"),
        "bid.withdraw": lambda d, o, b, c, k: pair(d, "bid_id", "carrier_id"),
        "clock.tick": _noop,
    }


def _with_handlers(cls: type, batches: list[list[dict]], handlers: dict):
    def run():
        engine = cls()
        engine._handlers = {typ: handlers[typ] for typ in engine._handlers}
        process = engine.process
        for batch in batches:
            process(batch)

    return run


def _kept(cls: type, batches: list[list[dict]]):
    def run():
        process = cls().process
        return [process(batch) for batch in batches]

    return run


def _event_rows(batches: list[list[dict]], cls: type) -> list[tuple]:
    rows = []
    for e in bench_core.engine_events(batches, cls):
        d = e["data"]
        rows.append(
            (e["id"], e["type"], e["ts"], e["key"], e["cause"], tuple(d.values()), d.get("lane"))
        )
    return rows


def _build_events(rows: list[tuple]):
    """The engine's event dicts, built from precomputed values (shape of each kind)."""

    def run():
        out = []
        append = out.append
        for id_, typ, ts, key, cause, v, lane in rows:
            if lane is not None:
                data = {"deal_id": v[0], "load_id": v[1], "offer_id": v[2], "bid_id": v[3],
                        "shipper_id": v[4], "carrier_id": v[5], "price_fen": v[6],
                        "lane": {"origin": lane["origin"], "destination": lane["destination"],
                                 "vehicle_class": lane["vehicle_class"]}}  # fmt: skip
            elif len(v) == 1:
                data = {"load_id": v[0]}
            elif len(v) == 2:
                data = {"ref_id": v[0], "reason": v[1]}
            elif len(v) == 3:
                data = {"offer_id": v[0], "remaining_kg": v[1], "remaining_dm3": v[2]}
            else:
                data = {"bid_id": v[0], "load_id": v[1], "carrier_id": v[2], "price_fen": v[3],
                        "best_fen": v[4]}  # fmt: skip
            append({"id": id_, "type": typ, "v": 1, "ts": ts, "key": key, "source": "matching",
                    "cause": cause, "data": data})  # fmt: skip
        return out

    def base():
        out = []
        append = out.append
        for id_, _typ, _ts, _key, _cause, v, lane in rows:
            if lane is not None:
                data = (v[0], v[1], v[2], v[3], v[4], v[5], v[6], lane["origin"],
                        lane["destination"], lane["vehicle_class"])  # fmt: skip
            elif len(v) == 1:
                data = v[0]
            else:
                data = v
            append(data and id_)
        return out

    return run, base


def bench_workload(name: str, batches: list[list[dict]], n: int, engines: dict, reps: int) -> dict:
    """Ablation stages and full runs for every engine, interleaved rep by rep."""
    stages: dict[tuple[str, str], float] = {}

    def timed(key: tuple[str, str], run, gc_on: bool = True) -> None:
        seconds, _ = bench_core.best_of(1, run, gc_on=gc_on)
        stages[key] = min(stages.get(key, float("inf")), seconds)

    for rep in range(reps):
        say(f"{name}: rep {rep + 1} of {reps}")
        timed(("loop", "loop"), lambda: [[None for _ in b] for b in batches], gc_on=False)
        for label, (cls, commands) in engines.items():
            timed((label, "envelope"), _with_handlers(cls, batches, dict.fromkeys(_parsers(commands), _noop)), gc_on=False)  # fmt: skip
            timed(
                (label, "validate"), _with_handlers(cls, batches, _parsers(commands)), gc_on=False
            )
            timed((label, "full_gc_off"), lambda cls=cls: bench_core.run_engine(batches, cls), gc_on=False)  # fmt: skip
            timed((label, "full"), lambda cls=cls: bench_core.run_engine(batches, cls))
        timed(("interpreted", "outputs_kept"), _kept(engines["interpreted"][0], batches))
    rows = _event_rows(batches, engines["interpreted"][0])
    build_events, base = _build_events(rows)
    for _ in range(reps):
        timed(("events", "build"), build_events, gc_on=False)
        timed(("events", "base"), base, gc_on=False)

    us = 1e6 / n
    events_us = max(0.0, stages["events", "build"] - stages["events", "base"]) * us
    result: dict = {"commands": n, "events": len(rows)}
    for label in engines:
        s = {k: v for (lab, k), v in stages.items() if lab == label}
        loop = stages["loop", "loop"] * us
        result[label] = {
            "ops_per_s": n / s["full"],
            "ops_per_s_gc_off": n / s["full_gc_off"],
            "us_per_command": {
                "loop": loop,
                "envelope_decode_clock_timer_test": s["envelope"] * us - loop,
                "validation": (s["validate"] - s["envelope"]) * us,
                "event_construction": events_us,
                "book_timers_state": (s["full_gc_off"] - s["validate"]) * us - events_us,
                "engine_gc_off": s["full_gc_off"] * us,
                "cyclic_gc": (s["full"] - s["full_gc_off"]) * us,
                "engine_gc_on": s["full"] * us,
            },
        }
    result["interpreted"]["ops_per_s_outputs_kept"] = n / stages["interpreted", "outputs_kept"]
    result["mypyc_speedup"] = result["mypyc"]["ops_per_s"] / result["interpreted"]["ops_per_s"]
    result["mypyc_speedup_gc_off"] = (
        result["mypyc"]["ops_per_s_gc_off"] / result["interpreted"]["ops_per_s_gc_off"]
    )
    return result


def bench_floors(n: int, seed: int, reps: int, batch: int, floor) -> dict:
    orders = workloads.price_only_orders(n, seed)
    batches = bench_core.batched(workloads.price_only(n, seed), batch)
    runs = {
        "minimal_book_interpreted": lambda: bench_core.run_minimal_book(orders),
        "minimal_book_mypyc": lambda: floor.run_minimal_book(orders),
        "envelope_book_interpreted": lambda: bench_core.run_envelope_book(batches),
        "envelope_book_mypyc": lambda: floor.run_envelope_book(batches),
    }
    peers, unavailable = load_peers([BEST_PEER])
    if BEST_PEER in peers:
        runs[BEST_PEER] = lambda: peers[BEST_PEER](orders)
    out: dict = {"unavailable": unavailable}
    trades = set()
    for name, run in runs.items():
        say(f"floors: {name}")
        seconds, result = bench_core.best_of(reps, run)
        trades.add(result)
        out[name] = n / seconds
    if len(trades) != 1:
        raise SystemExit(f"floors disagree on the number of trades: {trades}")
    return out


# -- report ----------------------------------------------------------------------------


def print_table(report: dict) -> None:
    print(f"\ntests/unit/matching against the compiled modules: {report['unit_tests_compiled']}")
    for name in ("price_only", "freight"):
        w = report[name]
        print(f"\n{name}: {w['commands']:,} commands, {w['events']:,} events, µs per command")
        print(f"  {'':<34} {'interpreted':>12} {'mypyc':>12}")
        for key in w["interpreted"]["us_per_command"]:
            a, b = w["interpreted"]["us_per_command"][key], w["mypyc"]["us_per_command"][key]
            print(f"  {key:<34} {a:>12.2f} {b:>12.2f}")
        print(f"  {'ops/s (gc on)':<34} {w['interpreted']['ops_per_s']:>12,.0f} {w['mypyc']['ops_per_s']:>12,.0f}")  # fmt: skip
        print(f"  {'ops/s (gc off)':<34} {w['interpreted']['ops_per_s_gc_off']:>12,.0f} {w['mypyc']['ops_per_s_gc_off']:>12,.0f}")  # fmt: skip
        print(f"  {'ops/s, outputs kept (old method)':<34} {w['interpreted']['ops_per_s_outputs_kept']:>12,.0f}")  # fmt: skip
        print(
            f"  mypyc speedup: {w['mypyc_speedup']:.2f}x (gc off {w['mypyc_speedup_gc_off']:.2f}x)"
        )
    print("\nfloors on the price-only orders (ops/s):")
    for key, value in report["floors"].items():
        if key != "unavailable":
            print(f"  {key:<34} {value:>12,.0f}")
    print("\nratios (price-only engine ops/s over ...):")
    for key, value in report["ratios"].items():
        print(f"  {key:<46} {value:>8.3f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_core_mypyc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one rep: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="runs per measure, best kept (3)")
    parser.add_argument("--seed", type=int, default=bench_core.SEED)
    parser.add_argument("--batch", type=int, default=bench_core.BATCH)
    parser.add_argument("--price-only-n", type=int, default=None, help="default 200,000")
    parser.add_argument("--freight-n", type=int, default=None, help="default 200,000")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="build here and keep it (default: a temporary directory, removed)")  # fmt: skip
    parser.add_argument("--no-tests", action="store_true",
                        help="skip tests/unit/matching against the compiled modules")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n_po = args.price_only_n or (4_000 if args.quick else 200_000)
    n_fr = args.freight_n or (4_000 if args.quick else 200_000)
    reps = args.reps or (1 if args.quick else 3)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wlex-mypyc-") as tmp:
        dest = args.build_dir or Path(tmp)
        say(f"building with mypyc in {dest}")
        build_s = build(dest)
        tests = None
        if not args.no_tests:
            say("tests/unit/matching against the compiled modules")
            tests = unit_tests(dest)
            say(f"  {tests}")
        c_engine, c_commands, floor = load_compiled(dest)
        from services.matching import commands as py_commands
        from services.matching.engine import Engine as PyEngine

        engines = {"interpreted": (PyEngine, py_commands), "mypyc": (c_engine.Engine, c_commands)}
        report: dict = {"build_s": build_s, "unit_tests_compiled": tests}
        for name, n, make in (
            ("price_only", n_po, workloads.price_only),
            ("freight", n_fr, workloads.freight_mix),
        ):
            batches = bench_core.batched(make(n, args.seed), args.batch)
            say(f"{name}: checking the compiled engine gives the same bytes")
            same_outputs(batches, PyEngine, c_engine.Engine)
            report[name] = bench_workload(name, batches, n, engines, reps)
            del batches
        report["floors"] = bench_floors(n_po, args.seed, reps, args.batch, floor)
        sys.path.remove(str(dest))

    floors = report["floors"]
    ratios = {}
    for label in ("interpreted", "mypyc"):
        ops = report["price_only"][label]["ops_per_s"]
        if BEST_PEER in floors:
            ratios[f"{label}_vs_best_peer"] = ops / floors[BEST_PEER]
        ratios[f"{label}_vs_minimal_book"] = ops / floors["minimal_book_interpreted"]
        ratios[f"{label}_vs_envelope_book_interpreted"] = ops / floors["envelope_book_interpreted"]
        ratios[f"{label}_vs_envelope_book_mypyc"] = ops / floors["envelope_book_mypyc"]
    if BEST_PEER in floors:
        ratios["envelope_book_mypyc_vs_best_peer"] = (
            floors["envelope_book_mypyc"] / floors[BEST_PEER]
        )
    report["ratios"] = ratios
    report.update({
        "commit": commit(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m loadtests.bench_core_mypyc", *(sys.argv[1:] if argv is None else argv)]),
        "params": {"seed": args.seed, "reps": reps, "batch_commands": args.batch,
                   "price_only_n": n_po, "freight_n": n_fr},
        "conditions": "one process; engines interleaved rep by rep; gc collected and frozen "
                      "before each run; each batch's events dropped on return",
        "wall_s": time.perf_counter() - started,
    })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten {args.out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
