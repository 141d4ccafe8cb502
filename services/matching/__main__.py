"""`python -m services.matching [--instance I --of N]`: the matching service.

Instance I of N owns the partitions p of `orders` with p % N == I; every instance of a
deployment must be started with the same N (docs/matching-service.md).
"""

from __future__ import annotations

from services.common.runner import instance_settings, run_service
from services.matching.config import MatchingSettings
from services.matching.service import main

if __name__ == "__main__":
    run_service(main, name="matching", settings=MatchingSettings(**instance_settings("matching")))
