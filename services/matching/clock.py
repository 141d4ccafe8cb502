"""The clock source: clock.tick commands into `orders`, so auctions close and orders
expire on time on idle lanes.

The engine never reads a clock (DESIGN): time reaches it only in the ts of commands. A
lane that gets no commands would keep its auctions open past closes_at. So the service
writes a clock.tick with the wall clock's ts into each partition it owns, and the tick
reaches the engine through the log like any command. Because ticks are part of the log,
a replay or an audit sees exactly the ticks the first run saw: determinism is kept.

A tick is written only when the partition's engine clock lags the wall clock by more
than one interval, so a busy partition (whose commands move its clock) gets none.
Ticks go through a plain idempotent producer, outside the batch transactions: a tick
lost to a crash is replaced by the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from services.common.envelope import encode, make

log = logging.getLogger(__name__)

SOURCE = "matching"


def tick(ts_ms: int) -> dict:
    return make("clock.tick", {}, None, SOURCE, ts_ms)


async def run_clock(
    producer: AIOKafkaProducer,
    topic: str,
    partitions: list[int],
    engine_now_ms: Callable[[int], int],
    interval_ms: int,
    stop: asyncio.Event,
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> None:
    """Until stop: every interval_ms, a tick to each of `partitions` whose engine
    clock (engine_now_ms(p)) is more than interval_ms behind the wall clock."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(interval_ms / 1000):
                await stop.wait()
            return
        except TimeoutError:
            pass
        now = wall_ms()
        futures = []
        for p in partitions:
            if now - engine_now_ms(p) > interval_ms:
                futures.append(await producer.send(topic, encode(tick(now)), partition=p))
        if futures:
            try:
                await asyncio.gather(*futures)
            except Exception:  # the next tick replaces it; never take the service down
                log.warning("clock tick not written", exc_info=True)
