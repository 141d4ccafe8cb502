"""`python -m services.matching [--instance I --of N]`: the matching service.

Instance I of N owns the partitions p of `orders` with p % N == I; every instance of a
deployment must be started with the same N (docs/matching-service.md).
"""

from __future__ import annotations

import argparse

from services.common.runner import run_service
from services.matching.config import MatchingSettings
from services.matching.service import main


def parse_args(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m services.matching")
    parser.add_argument("--instance", type=int, help="this instance's index, 0 <= I < N")
    parser.add_argument("--of", type=int, help="the number of instances N")
    args = parser.parse_args(argv)
    overrides = {}
    if args.instance is not None:
        overrides["matching_instance"] = args.instance
    if args.of is not None:
        overrides["matching_instances"] = args.of
    return overrides


if __name__ == "__main__":
    run_service(main, name="matching", settings=MatchingSettings(**parse_args()))
