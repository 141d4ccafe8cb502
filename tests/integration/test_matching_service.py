"""The matching service against the real broker: market equals a clean Engine run over
the same orders log, partition by partition and byte for byte; a restart resumes from its
snapshot; two instances splitting the partitions give what one gives; the clock source
closes auctions on idle lanes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka.structs import TopicPartition

from loadtests import workloads
from services.common import schemas
from services.common.envelope import decode, make
from services.common.topics import create_topics
from services.devenv.ports import free_port_block
from services.matching.config import MatchingSettings
from services.matching.service import MatchingService

from .matching_helpers import clean_run, first_difference, read_partitions, write_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4


def settings(bootstrap: str, prefix: str, **kw) -> MatchingSettings:
    base = dict(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        matching_tick_interval_ms=0,  # the input log is exactly what the test wrote
        matching_snapshot_every_commands=700,
        matching_batch_records_max=500,
    )
    base.update(kw)
    return MatchingSettings(**base)


def garbled() -> list:
    """Three kinds of bad input: undecodable bytes (dead letter), a broken envelope
    (dead letter) and a valid envelope with bad data (order.rejected invalid)."""
    key = "420100>420600>van-9.6"
    bad_data = make(
        "load.post",
        {"load_id": "bad-1", "weight_kg": -5},
        key,
        "gateway",
        workloads.START_MS + 5,
        id="bad-data-1",
    )
    return [
        (key, b"{not json"),
        (key, orjson.dumps({"id": "x", "type": "load.post"})),
        bad_data,
    ]


async def run_until_caught_up(
    services: list[MatchingService], bootstrap: str, topic: str, timeout_s: float = 90.0
) -> None:
    """Run the services until each has processed its partitions to their end offsets,
    then stop them (they commit the batch in hand first)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    try:
        deadline = time.monotonic() + timeout_s
        from aiokafka import AIOKafkaConsumer

        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        await probe.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            end = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        while time.monotonic() < deadline:
            for t in tasks:
                if t.done():
                    t.result()  # raises what the service raised
            done = all(
                s.ready.is_set()
                and all(s.next_offset[p] >= end[TopicPartition(topic, p)] for p in s.owned)
                for s in services
            )
            if done:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("services did not catch up in time")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_market_equals_engine_process_over_the_same_log(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    commands = workloads.freight_mix(4000, seed=11)
    await write_log(
        kafka_bootstrap, topic_prefix + "orders", commands[:2000] + garbled() + commands[2000:]
    )
    service = MatchingService(settings(kafka_bootstrap, topic_prefix))
    await run_until_caught_up([service], kafka_bootstrap, topic_prefix + "orders")

    orders = await read_partitions(kafka_bootstrap, topic_prefix + "orders")
    market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    want = clean_run(orders)
    assert sum(map(len, orders.values())) == 4003
    assert sum(map(len, want.values())) > 3000
    assert market == want, first_difference(market, want)
    # Every input partition had a snapshot written in a committed transaction.
    snaps = await read_partitions(kafka_bootstrap, topic_prefix + "matching.snapshots")
    assert len(snaps[0]) >= PARTITIONS
    for values in market.values():  # DESIGN: every emitted event passes its schema
        for v in values:
            schemas.validate(decode(v))
    dead = await read_partitions(kafka_bootstrap, topic_prefix + "dlq")
    assert sum(map(len, dead.values())) == 2
    rejected = [
        decode(v) for vs in market.values() for v in vs if decode(v)["cause"] == "bad-data-1"
    ]
    assert [e["data"]["reason"] for e in rejected] == ["invalid"]


async def test_restart_resumes_from_snapshot_and_committed_offset(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    orders_topic = topic_prefix + "orders"
    commands = workloads.freight_mix(5000, seed=12)
    await write_log(kafka_bootstrap, orders_topic, commands[:3000])
    first = MatchingService(settings(kafka_bootstrap, topic_prefix))
    await run_until_caught_up([first], kafka_bootstrap, orders_topic)
    await write_log(kafka_bootstrap, orders_topic, commands[3000:])
    second = MatchingService(settings(kafka_bootstrap, topic_prefix))
    await run_until_caught_up([second], kafka_bootstrap, orders_topic)
    # The second run restored snapshots rather than replaying the whole log.
    assert second.base and all(b.next_offset > 0 for b in second.base.values())

    orders = await read_partitions(kafka_bootstrap, orders_topic)
    market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    want = clean_run(orders)
    assert market == want, first_difference(market, want)


async def test_two_instances_give_what_one_gives(kafka_bootstrap, topic_prefix):
    one, two = topic_prefix + "one.", topic_prefix + "two."
    commands = workloads.freight_mix(4000, seed=13)
    for prefix in (one, two):
        await create_topics(kafka_bootstrap, prefix, partitions=PARTITIONS)
        await write_log(kafka_bootstrap, prefix + "orders", commands)
    await run_until_caught_up(
        [MatchingService(settings(kafka_bootstrap, one))], kafka_bootstrap, one + "orders"
    )
    pair = [
        MatchingService(settings(kafka_bootstrap, two, matching_instance=i, matching_instances=2))
        for i in (0, 1)
    ]
    await run_until_caught_up(pair, kafka_bootstrap, two + "orders")
    assert [s.owned for s in pair] == [[0, 2], [1, 3]]

    market_one = await read_partitions(kafka_bootstrap, one + "market")
    market_two = await read_partitions(kafka_bootstrap, two + "market")
    assert sum(map(len, market_one.values())) > 3000
    assert market_two == market_one, first_difference(market_two, market_one)


async def test_clock_ticks_close_an_auction_on_an_idle_lane(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    now = int(time.time() * 1000)
    key = "420100>420600>van-9.6"
    load = make(
        "load.post",
        {
            "load_id": "A1",
            "shipper_id": "s1",
            "lane": {"origin": "420100", "destination": "420600", "vehicle_class": "van-9.6"},
            "weight_kg": 1000,
            "volume_dm3": 1000,
            "pickup_from": now,
            "pickup_to": now + 3_600_000,
            "mode": "auction",
            "auction": {
                "closes_at": now + 1500,
                "reserve_fen": None,
                "instant_fen": None,
                "sealed": False,
            },
        },
        key,
        "gateway",
        now,
        id="cmd-A1",
    )
    await write_log(kafka_bootstrap, topic_prefix + "orders", [load])
    stop = asyncio.Event()
    service = MatchingService(
        settings(kafka_bootstrap, topic_prefix, matching_tick_interval_ms=200)
    )
    task = asyncio.create_task(service.run(stop))
    try:
        market = await read_partitions(
            kafka_bootstrap, topic_prefix + "market", until=2, timeout_s=20
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    events = [decode(v) for v in market[0]]
    assert [e["type"] for e in events[:2]] == ["auction.opened", "auction.closed"]
    closed = events[1]
    assert closed["data"] == {"load_id": "A1", "bid_id": None, "price_fen": None}
    assert now + 1500 <= closed["ts"] <= now + 1500 + 2000  # on time, by a tick
    orders = await read_partitions(kafka_bootstrap, topic_prefix + "orders")
    ticks = [decode(v) for v in orders[0][1:]]
    assert ticks and all(t["type"] == "clock.tick" and t["source"] == "matching" for t in ticks)


class RefusedOnce(MatchingService):
    """Adds, to its third batch only, a record the broker refuses (above market's
    max.message.bytes): the whole transaction must abort and be redone."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def transform(self, batch):
        out = super().transform(batch)
        self.calls += 1
        if self.calls == 3:
            out.extras.append((self.market, 0, b"too-big", b"x" * 2_000_000, []))
        return out


async def test_an_aborted_batch_is_redone_from_snapshot_and_replay(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    commands = workloads.freight_mix(5000, seed=14)
    await write_log(kafka_bootstrap, topic_prefix + "orders", commands)
    service = RefusedOnce(
        settings(kafka_bootstrap, topic_prefix, matching_snapshot_every_commands=300)
    )
    await run_until_caught_up([service], kafka_bootstrap, topic_prefix + "orders")
    assert service.metrics.transactions.labels("aborted")._value.get() >= 1

    orders = await read_partitions(kafka_bootstrap, topic_prefix + "orders")
    market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    want = clean_run(orders)
    assert market == want, first_difference(market, want)


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


ROOT = Path(__file__).resolve().parents[2]


def spawn(bootstrap: str, prefix: str, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, WLEX_KAFKA_BOOTSTRAP=bootstrap, WLEX_TOPIC_PREFIX=prefix,
               WLEX_SERVICE_NAME="matching", WLEX_HTTP_PORT=str(port))  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.matching", "--instance", "0", "--of", "1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_the_process_serves_healthz_and_metrics(kafka_bootstrap, topic_prefix, tmp_path):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    await write_log(kafka_bootstrap, topic_prefix + "orders", workloads.freight_mix(500, seed=15))
    port = free_port_block(1)
    proc = spawn(kafka_bootstrap, topic_prefix, port, tmp_path / "matching.log")
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline:
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
            if status == 200:
                break
            assert proc.poll() is None
            await asyncio.sleep(0.2)
        assert status == 200
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            if "wlex_matching_commands_consumed_total 500.0" in body and (
                'wlex_matching_consumer_lag_messages{partition="0"}' in body
            ):
                break
            await asyncio.sleep(0.5)
        assert "wlex_matching_commands_consumed_total 500.0" in body
        for name in ("wlex_matching_events_produced_total{type=",
                     "wlex_matching_batch_commands_bucket", "wlex_matching_batch_seconds_bucket",
                     "wlex_matching_transaction_commit_seconds_bucket",
                     "wlex_matching_resting_orders", "wlex_matching_open_auctions",
                     'wlex_matching_consumer_lag_messages{partition="0"} 0.0'):  # fmt: skip
            assert name in body, name
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
