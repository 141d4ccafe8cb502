"""The matching service's low-latency path against the real broker: while a transaction
is in flight the next batch is fetched and run through the engines in pieces, as the
commands arrive (pipeline.Pipeline._next_while). Commands streamed in while the service
runs, with one transaction refused midway, still give a market equal to a clean Engine
run over the same orders log, partition by partition and byte for byte."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError
from aiokafka.producer.sender import AddOffsetsToTxnHandler

from loadtests import workloads
from services.common.envelope import encode
from services.common.kafka import make_producer
from services.common.topics import create_topics
from services.matching import pipeline
from services.matching.config import MatchingSettings
from services.matching.service import MatchingService

from .matching_helpers import clean_run, first_difference, read_partitions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4
COMMANDS = 3000
CHUNK = 40  # commands per send while the service runs
CHUNK_GAP_S = 0.01


class Counted(MatchingService):
    """Counts the pieces its engines ran and the batches committed; to one batch (the
    one holding the sixth piece) adds a record the broker refuses (above market's
    max.message.bytes), so that a batch gathered from pieces aborts and is redone."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pieces = 0
        self.committed = 0
        self.refused = False

    def transform(self, batch):
        out = super().transform(batch)
        self.pieces += 1
        if self.pieces == 6 and not self.refused:
            self.refused = True
            out.extras.append((self.market, 0, b"too-big", b"x" * 2_000_000, []))
        return out

    def on_commit(self, batch, out, commit_s):
        super().on_commit(batch, out, commit_s)
        self.committed += 1


async def stream(bootstrap: str, topic: str, commands: list[dict]) -> None:
    """Sends commands keyed by lane in chunks of CHUNK, CHUNK_GAP_S apart, each chunk
    acknowledged before the next: a steady trickle rather than a preloaded log."""
    producer = make_producer(bootstrap, client_id="test-stream", linger_ms=0)
    await producer.start()
    try:
        for i in range(0, len(commands), CHUNK):
            futures = [
                await producer.send(topic, encode(c), key=(c["key"] or "none").encode())
                for c in commands[i : i + CHUNK]
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(CHUNK_GAP_S)
    finally:
        await producer.stop()


async def run_streamed(
    service: MatchingService, bootstrap: str, orders: str, seed: int
) -> dict[int, int]:
    """Runs service while COMMANDS freight-mix commands are streamed into orders, until
    its engines have taken every one; stops it. Returns the records per partition."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(60):
            await service.ready.wait()
        await stream(bootstrap, orders, workloads.freight_mix(COMMANDS, seed=seed))
        end = dict.fromkeys(range(PARTITIONS), 0)
        for p, values in (await read_partitions(bootstrap, orders)).items():
            end[p] = len(values)
        assert sum(end.values()) == COMMANDS
        deadline = time.monotonic() + 90
        while not all(service.next_offset[p] >= end[p] for p in service.owned):
            if task.done():
                task.result()  # raises what the service raised
            assert time.monotonic() < deadline, "the service did not catch up in time"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return end


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset of every partition of topic that has one."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        found = {tp.partition: await consumer.committed(tp) for tp in tps}
        return {p: offset for p, offset in found.items() if offset is not None}
    finally:
        await consumer.stop()


def two_in_flight(kafka_bootstrap: str, topic_prefix: str) -> MatchingService:
    """The service with its default transactions (two in flight, begun early), small
    batches and snapshots, and no clock ticks: the input log is what the test wrote."""
    return MatchingService(
        MatchingSettings(
            kafka_bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            matching_tick_interval_ms=0,
            matching_snapshot_every_commands=400,
            matching_batch_records_max=300,
        )
    )


async def assert_redone(
    service: MatchingService,
    aborted_before: float,
    end: dict[int, int],
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """At least one transaction aborted, and still: the group's offsets are the log's
    end (though transactions' offset commits overlapped, a restart would resume exactly
    there), and market equals a clean Engine run over orders."""
    aborted = service.metrics.transactions.labels("aborted")._value.get() - aborted_before
    assert aborted >= 1
    orders = topic_prefix + "orders"
    assert await committed_offsets(kafka_bootstrap, service.group_id, orders) == {
        p: n for p, n in end.items() if n
    }
    market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    want = clean_run(await read_partitions(kafka_bootstrap, orders))
    assert market == want, first_difference(market, want)


async def test_streamed_commands_gathered_in_pieces_give_the_clean_run(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    orders = topic_prefix + "orders"
    service = Counted(
        MatchingSettings(
            kafka_bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            matching_tick_interval_ms=0,  # the input log is exactly what the test wrote
            matching_snapshot_every_commands=400,
            matching_batch_records_max=500,
            # One transaction at a time: the next batch gathers pieces for the whole
            # of each commit.
            matching_transactions_in_flight=1,
        )
    )
    assert service.settings.matching_gather_poll_ms > 0  # the path under test
    aborted_before = service.metrics.transactions.labels("aborted")._value.get()
    await run_streamed(service, kafka_bootstrap, orders, seed=41)

    aborted = service.metrics.transactions.labels("aborted")._value.get() - aborted_before
    assert service.refused and aborted >= 1
    # More pieces than batches committed: some batches were gathered from several.
    assert service.pieces > service.committed + aborted
    market = await read_partitions(kafka_bootstrap, topic_prefix + "market")
    want = clean_run(await read_partitions(kafka_bootstrap, orders))
    assert market == want, first_difference(market, want)


async def test_a_commit_failing_after_the_next_batch_sent_gives_the_clean_run(
    kafka_bootstrap, topic_prefix, monkeypatch
):
    """Two transactions in flight (matching_transactions_in_flight 2): one commit call
    fails after the next batch's transaction, on the other transactional id, has sent
    its records. Both abort, the consumer goes back to the first one's start, and
    market still equals the clean run."""
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    orders = topic_prefix + "orders"
    calls = {"commit": 0}
    sends: list[tuple[float, int]] = []  # (when, producer) of every send_batch
    injected: dict[str, int] = {}  # the commit call refused
    real_commit = AIOKafkaProducer.commit_transaction
    real_send_batch = AIOKafkaProducer.send_batch

    async def send_batch(self, *a, **kw):
        sends.append((time.monotonic(), id(self)))
        return await real_send_batch(self, *a, **kw)

    async def commit_transaction(self):
        # From the fifth commit on, refuse the first one for which the next batch's
        # transaction (the other producer) sends records after this one's last send,
        # waiting up to 0.3 s for that to happen; the others go through.
        calls["commit"] += 1
        if "failed" not in injected and calls["commit"] >= 5:
            mine = max((when for when, who in sends if who == id(self)), default=0.0)
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                if any(when > mine and who != id(self) for when, who in sends):
                    injected["failed"] = calls["commit"]
                    raise KafkaError("injected: commit refused")
                await asyncio.sleep(0.01)
        return await real_commit(self)

    monkeypatch.setattr(AIOKafkaProducer, "commit_transaction", commit_transaction)
    monkeypatch.setattr(AIOKafkaProducer, "send_batch", send_batch)
    service = two_in_flight(kafka_bootstrap, topic_prefix)
    assert service.settings.matching_transactions_in_flight == 2  # the path under test
    aborted_before = service.metrics.transactions.labels("aborted")._value.get()
    end = await run_streamed(service, kafka_bootstrap, orders, seed=43)

    assert "failed" in injected, "no commit overlapped by the next transaction"
    await assert_redone(service, aborted_before, end, kafka_bootstrap, topic_prefix)


@pytest.mark.parametrize("refused", ["answer", "while_gathering"])
async def test_a_transaction_begun_early_and_refused_gives_the_clean_run(
    kafka_bootstrap, topic_prefix, monkeypatch, refused
):
    """With matching_early_begin, a batch's transaction is opened, and the group added
    to it, while the batch is still gathered. The coordinator refuses one such
    transaction (GROUP_AUTHORIZATION_FAILED, as for a group the producer may not
    write), either on the early AddOffsetsToTxn's answer, wherever the batch then is,
    or while the batch is still being gathered, so that more of it arrives for a
    transaction that has failed. That batch aborts and is redone, market still equals
    the clean run, and the group's offsets end at the log's end."""
    await create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    orders = topic_prefix + "orders"
    early: list[bool] = []  # per AddOffsetsToTxn: sent before its offsets were given
    injected: dict[str, int] = {}
    real_create = AddOffsetsToTxnHandler.create_request
    real_handle = AddOffsetsToTxnHandler.handle_response
    real_begin_early = pipeline.begin_early

    def create_request(self):
        early.append(not self._sender._txn_manager._pending_txn_offsets)
        return real_create(self)

    def handle_response(self, resp):
        if refused == "answer" and "at" not in injected and early.count(True) >= 5:
            if early[-1]:
                injected["at"] = len(early)
                # What aiokafka's handler does with GROUP_AUTHORIZATION_FAILED.
                self._sender._txn_manager.error_transaction(
                    GroupAuthorizationFailedError(self._group_id)
                )
                return None
        return real_handle(self, resp)

    calls = {"begin_early": 0}

    async def begin_early(producer, partitions, group_id):
        await real_begin_early(producer, partitions, group_id)
        calls["begin_early"] += 1
        if refused == "while_gathering" and "at" not in injected and calls["begin_early"] >= 20:
            injected["at"] = calls["begin_early"]
            producer._txn_manager.error_transaction(GroupAuthorizationFailedError(group_id))
            # More of the batch arrives for the failed transaction.
            await real_begin_early(producer, partitions, group_id)

    monkeypatch.setattr(AddOffsetsToTxnHandler, "create_request", create_request)
    monkeypatch.setattr(AddOffsetsToTxnHandler, "handle_response", handle_response)
    monkeypatch.setattr(pipeline, "begin_early", begin_early)
    service = two_in_flight(kafka_bootstrap, topic_prefix)
    assert service.settings.matching_early_begin  # the path under test
    aborted_before = service.metrics.transactions.labels("aborted")._value.get()
    end = await run_streamed(service, kafka_bootstrap, orders, seed=47)

    assert "at" in injected, f"too few early transactions: {early}"
    assert early.count(True) >= 5  # groups were added before their offsets were known
    await assert_redone(service, aborted_before, end, kafka_bootstrap, topic_prefix)
