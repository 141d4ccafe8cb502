"""kill -9 of the matching service at random moments under load, restarted each time:
afterwards `market`, read as a read_committed consumer reads it, is byte-identical to a
clean single Engine run over the same orders log. No loss, no duplicate, no reorder."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests import workloads
from services.common.topics import create_topics
from tests.integration.matching_helpers import (
    clean_run,
    first_difference,
    read_partitions,
    write_log,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
PRELOAD = 20_000
STREAMED = 40_000  # written while the service is being killed
KILLS = 6
SEED = 4242
FINAL_TIMEOUT_S = 90.0


def start_service(bootstrap: str, prefix: str, log_path: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        WLEX_KAFKA_BOOTSTRAP=bootstrap,
        WLEX_TOPIC_PREFIX=prefix,
        WLEX_SERVICE_NAME="matching",
        WLEX_HTTP_PORT="0",
        # The input log must be exactly what the test wrote: no clock ticks.
        WLEX_MATCHING_TICK_INTERVAL_MS="0",
        # Small batches and frequent snapshots: kills land between and inside many
        # transactions, and restarts go through snapshot + silent replay.
        WLEX_MATCHING_BATCH_RECORDS_MAX="300",
        WLEX_MATCHING_SNAPSHOT_EVERY_COMMANDS="1000",
    )
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.matching"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def recoveries(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    return [line for line in log_path.read_text().splitlines() if "recovered" in line]


async def wait_recovered(log_path: Path, count: int, proc: subprocess.Popen) -> None:
    """Until the log shows `count` recoveries (bounded: 40 s)."""
    deadline = time.monotonic() + 40
    while len(recoveries(log_path)) < count:
        assert proc.poll() is None, log_path.read_text()[-3000:]  # noqa: ASYNC240
        assert time.monotonic() < deadline, "the service did not become ready"
        await asyncio.sleep(0.05)


async def test_market_is_byte_identical_after_repeated_kill_9(
    kafka_bootstrap, topic_prefix, tmp_path
):
    rng = random.Random(SEED)
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    orders_topic = topic_prefix + "orders"
    commands = workloads.freight_mix(PRELOAD + STREAMED, seed=SEED)
    await write_log(kafka_bootstrap, orders_topic, commands[:PRELOAD])

    async def stream() -> None:  # the load: ~4,000 commands/s while the kills go on
        for i in range(PRELOAD, PRELOAD + STREAMED, 2000):
            await write_log(kafka_bootstrap, orders_topic, commands[i : i + 2000])
            await asyncio.sleep(0.5)

    writer = asyncio.create_task(stream())
    log_path = tmp_path / "matching.log"
    kills = 0
    try:
        for k in range(KILLS):
            seen = len(recoveries(log_path))
            proc = start_service(kafka_bootstrap, topic_prefix, log_path)
            if k % 3 != 2:
                # Most kills land while it works through the backlog; every third one
                # while it is still starting (loading snapshots, replaying).
                await wait_recovered(log_path, seen + 1, proc)
                await asyncio.sleep(rng.uniform(0.05, 2.0))
            else:
                await asyncio.sleep(rng.uniform(0.5, 2.5))
            assert proc.poll() is None, log_path.read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
        await asyncio.wait_for(writer, 60)
    finally:
        if not writer.done():
            writer.cancel()
    assert kills == KILLS

    orders = await read_partitions(kafka_bootstrap, orders_topic)
    assert sum(map(len, orders.values())) == PRELOAD + STREAMED
    want = clean_run(orders)
    total = sum(map(len, want.values()))

    proc = start_service(kafka_bootstrap, topic_prefix, log_path)
    try:
        deadline = time.monotonic() + FINAL_TIMEOUT_S
        market = {}
        while time.monotonic() < deadline:
            market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
            if sum(map(len, market.values())) >= total:
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            await asyncio.sleep(1.0)
        # Read once more after a pause: a duplicate written late would show up here.
        await asyncio.sleep(1.0)
        market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert market == want, first_difference(market, want)
    # The restarts went through snapshots and silent replay, not only a replay from 0.
    done = recoveries(log_path)
    assert len(done) >= KILLS * 2 // 3, done
    assert any(" 0 snapshots loaded" not in line for line in done), done
    assert any(" 0 commands replayed" not in line for line in done), done
