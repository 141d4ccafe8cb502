"""A token bucket per API key, in a bounded table.

Each key may make `rate_per_s` requests a second on average and `burst` at once. The
table holds at most `keys_max` buckets; past that the least recently used bucket is
dropped, which only ever forgives a key (it comes back full), never blocks one wrongly.
Per process: with n gateway instances behind a balancer a key gets up to n times the
rate, which is the usual trade for not paying a shared store a round trip per request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        keys_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or keys_max < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and keys_max >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.keys_max = keys_max
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at]

    def take(self, key: str) -> float:
        """Takes a token for key: 0.0 when granted, else the seconds until one is due."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self.keys_max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(wait_s: float) -> str:
    """Retry-After in whole seconds (RFC 9110 allows no fraction), never 0."""
    return str(max(1, math.ceil(wait_s)))
