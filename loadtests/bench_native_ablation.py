"""The native core's command split by ablation: `python -m loadtests.bench_native_ablation`.

Why: bench_core's ratio to the minimal book (target 0.6) charges the engine for all it
does behind its interface: reading each command's three dicts, the rules, and the
outcomes as JSON bytes. The minimal book is given (side, price) tuples and returns a
count. This measures what the interface alone costs, so the ratio can be read.

What it does, in order:
1. Builds services/matching/native with the cargo feature `ablation` (Core.set_ablation)
   into a temporary directory. The installed package is not touched; the service never
   loads this build.
2. Checks that build with the ablation off, and with `no_id_maps`, gives the installed
   build's bytes, batch by batch, on the whole price-only workload; and that `read` gives
   no event and `read_and_event` one rejection a command.
3. Races (bench_core.race: rounds, gc as bench_core) on bench_core's price-only workload:
   - `engine`: the installed core's process_encoded, as bench_core times it;
   - `read`: the ablated build reading every command into its struct and stopping;
   - `read_and_event`: the same, plus one order.rejected event per command, written and
     returned as process_encoded returns events;
   - `no_id_maps`: the whole engine but for the market orders' id maps (no duplicate-id
     check, no insert), which on this workload (no duplicate ids, no cancels) gives the
     engine's very bytes, checked before the race: what the maps cost;
   - the minimal book and the best peer.
4. Prints each as ops/s, ns per command and a ratio to the minimal book, and the time a
   command has left for the rules at 0.6 of the minimal book once `read_and_event` is
   paid, and what the id maps cost (`no_id_maps` against the engine). Writes
   loadtests/results/bench_native_ablation.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests import bench_core, workloads
from loadtests.peers import load_peers
from loadtests.report import ROOT, commit, machine

RESULTS = Path(__file__).parent / "results" / "bench_native_ablation.json"
NATIVE = ROOT / "services" / "matching" / "native"
BEST_PEER = "kautenja-limit-order-book"
TARGET_VS_MINIMAL = 0.6  # issue 3's target for ratio_vs_minimal_book
MODES = {"read": 1, "read_and_event": 2, "no_id_maps": 3}


def build(target: Path):
    """Build the native crate with the `ablation` feature into `target` and load it
    under its own name (the installed wlex_matching_native stays as it is)."""
    env = dict(os.environ, MATURIN_PEP517_ARGS="--features ablation")
    cargo_bin = Path.home() / ".cargo" / "bin"  # rustup's, as the Makefile adds it
    env["PATH"] = f"{cargo_bin}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(NATIVE)], check=True, env=env)  # fmt: skip
    so = next((target / "wlex_matching_native").glob("wlex_matching_native*.so"))
    name = "wlex_ablation.wlex_matching_native"
    loader = importlib.machinery.ExtensionFileLoader(name, str(so))
    spec = importlib.util.spec_from_file_location(name, so, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="price-only orders")
    parser.add_argument("--seed", type=int, default=bench_core.SEED)
    parser.add_argument("--rounds", type=int, default=bench_core.RACE_ROUNDS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import wlex_matching_native as installed

    from services.common.reasons import ENGINE_REJECT_PRECEDENCE

    reasons = list(ENGINE_REJECT_PRECEDENCE)
    n = args.n
    orders = workloads.price_only_orders(n, args.seed)
    batches = bench_core.batched(workloads.price_only(n, args.seed), bench_core.BATCH)
    with tempfile.TemporaryDirectory(prefix="wlex-ablation-") as tmp:
        bench_core.say("building the native core with the `ablation` feature")
        ablated = build(Path(tmp))

        bench_core.say("checking the ablated build's engine against the installed one")
        a, b, c = installed.Core(reasons), ablated.Core(reasons), ablated.Core(reasons)
        c.set_ablation(MODES["no_id_maps"])
        for batch in batches:
            want = a.process_encoded(batch)
            if want != b.process_encoded(batch) or want != c.process_encoded(batch):
                raise SystemExit("the ablated build's events differ from the installed build's")
        # And the cut-short modes do what they say: no event, then one rejection a command.
        for name in ("read", "read_and_event"):
            core = ablated.Core(reasons)
            core.set_ablation(MODES[name])
            events = [v for batch in batches for _, v in core.process_encoded(batch)]
            expected = n if name == "read_and_event" else 0
            if len(events) != expected or any(b'"type":"order.rejected"' not in v for v in events):
                raise SystemExit(f"ablation {name}: {len(events)} events, expected {expected}")

        def run(module, mode: int = 0):
            core = module.Core(reasons)
            if mode:
                core.set_ablation(mode)
            for batch in batches:
                core.process_encoded(batch)

        peers, unavailable = load_peers([BEST_PEER])
        contenders = {
            "engine": lambda: run(installed),
            **{name: (lambda mode=mode: run(ablated, mode)) for name, mode in MODES.items()},
            "minimal_book": lambda: bench_core.run_minimal_book(orders),
            **{name: (lambda r=r: r(orders)) for name, r in peers.items()},
        }
        bench_core.say(f"race: {', '.join(contenders)} ({args.rounds} rounds)")
        load0 = os.getloadavg()[0]
        seconds = bench_core.race(contenders, args.rounds)

    minimal = seconds["minimal_book"]
    runs = {name: {"ops_per_s": n / s, "ns_per_command": s / n * 1e9,
                   "ratio_vs_minimal_book": minimal / s} for name, s in seconds.items()}  # fmt: skip
    budget_ns = minimal / n * 1e9 / TARGET_VS_MINIMAL
    result = {
        "orders": n,
        "seed": args.seed,
        "batch_commands": bench_core.BATCH,
        "race_rounds": args.rounds,
        "runs": runs,
        "peers_unavailable": unavailable,
        "budget_ns_at_target": budget_ns,
        "left_for_rules_ns": budget_ns - runs["read_and_event"]["ns_per_command"],
        "engine_rules_and_events_ns": runs["engine"]["ns_per_command"]
        - runs["read"]["ns_per_command"],
        "id_maps_ns": runs["engine"]["ns_per_command"] - runs["no_id_maps"]["ns_per_command"],
        "load_avg_1m_start": load0,
        "python": sys.version.split()[0],
        "commit": commit(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m loadtests.bench_native_ablation",
    }
    print(f"\nprice-only, {n:,} orders, best of {args.rounds} raced rounds:")
    width = max(map(len, runs))
    print(f"  {'':<{width}} {'ops/s':>12} {'ns/command':>11} {'vs minimal book':>16}")
    for name, r in runs.items():
        print(f"  {name:<{width}} {r['ops_per_s']:>12,.0f} {r['ns_per_command']:>11,.0f}"
              f" {r['ratio_vs_minimal_book']:>16.3f}")  # fmt: skip
    print(f"  at {TARGET_VS_MINIMAL} of the minimal book a command may take {budget_ns:,.0f} ns;"
          f" reading it and writing one event leaves {result['left_for_rules_ns']:,.0f} ns"
          f" for the rules (the engine spends {result['engine_rules_and_events_ns']:,.0f} ns"
          f" on rules and events)")  # fmt: skip
    print(f"  the market orders' id maps: {result['id_maps_ns']:,.0f} ns a command")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"  written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )
    return result


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    bench_core.say(f"done in {time.perf_counter() - started:.0f} s")
