"""Cold and warm start times of `wlex dev up`.

cold: an empty WLEX_HOME, so the run copies the Kafka jars with Maven (from the local
      Maven repository, ~/.m2, once it holds them), runs initdb, formats KRaft storage and
      creates the topics;
warm: the same WLEX_HOME again after `wlex dev down`: data and jars are there.
Each is measured `--runs` times on free loopback ports; the median is reported and
written to loadtests/results/bench_startup.json.

    python -m loadtests.bench_startup [--runs 3] [--brokers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from loadtests.report import commit, machine
from services.devenv.ports import free_port_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results" / "bench_startup.json"


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--brokers", type=int, default=1, choices=(1, 3))
    args = parser.parse_args()
    wlex = str(Path(sys.executable).parent / "wlex")
    cold, warm = [], []
    for run in range(args.runs):
        home = Path(tempfile.mkdtemp(prefix="wlex-startup-"))
        base = free_port_block(2 * args.brokers + 1)
        env = dict(
            os.environ,
            WLEX_HOME=str(home),
            WLEX_KAFKA_PORT=str(base),
            WLEX_KAFKA_CONTROLLER_PORT=str(base + args.brokers),
            WLEX_POSTGRES_PORT=str(base + 2 * args.brokers),
            WLEX_HTTP_PORT_BASE=str(base + 2 * args.brokers + 1),
        )
        env.pop("WLEX_KAFKA_BOOTSTRAP", None)
        env.pop("WLEX_DATABASE_URL", None)
        up = [wlex, "dev", "up", "--brokers", str(args.brokers)]
        try:
            cold.append(_timed(up, env))
            subprocess.run([wlex, "dev", "down"], env=env, check=True, cwd=ROOT)
            warm.append(_timed(up, env))
        finally:
            subprocess.run([wlex, "dev", "down"], env=env, check=False, cwd=ROOT)
            shutil.rmtree(home, ignore_errors=True)
        print(
            f"run {run + 1}/{args.runs}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s", flush=True
        )
    result = {
        "brokers": args.brokers,
        "runs": args.runs,
        "cold_start_s_median": round(statistics.median(cold), 2),
        "warm_start_s_median": round(statistics.median(warm), 2),
        "cold_start_s": [round(x, 2) for x in cold],
        "warm_start_s": [round(x, 2) for x in warm],
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python -m loadtests.bench_startup --runs {args.runs} --brokers {args.brokers}",
        "commit": commit(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(
        f"wlex dev up ({args.brokers} broker(s)): cold {result['cold_start_s_median']} s, "
        f"warm {result['warm_start_s_median']} s (median of {args.runs})"
    )


if __name__ == "__main__":
    main()
