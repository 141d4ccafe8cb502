"""The market fan-out of one gateway process: one read_committed consumer of `market`
feeds an in-process hub; every WebSocket connection is a Listener with a bounded queue.

The hub never waits for a connection: a Listener whose queue is full is dropped (close
4408, docs/stream.md) and resumes by cursor. Entries are encoded once per event, not
once per connection; a connection's filter is evaluated once per lane and cached.

Cursors are the next offsets of every `market` partition. The hub starts at the end of
the log (a live feed); resuming from a cursor replays from the ring of recent entries
(services.gateway.feed.Ring) or, for a cursor older than the ring, from Kafka with a
short-lived consumer seeked to it, then from the ring, then live, with no await between
the last ring read and the registration: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge, Histogram
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.kafka import decode_batch, make_consumer, make_producer
from services.common.metrics import kafka_metrics
from services.gateway import feed

log = logging.getLogger(__name__)

SLOW_CONSUMER = 4408  # the close code of a connection whose queue overflowed


class StreamConfig(BaseSettings):
    """WLEX_GATEWAY_STREAM_* settings of the WebSocket stream."""

    model_config = SettingsConfigDict(env_prefix="WLEX_GATEWAY_STREAM_", extra="ignore")

    # Frames waiting for one socket; beyond it the connection is dropped (4408).
    # 1,024 frames is seconds of a busy lane set; a reader that falls that far behind
    # is better served by a resume than by a hub that waits for it.
    queue_frames_max: int = 1024
    # Recent entries kept per partition for resumes without Kafka (~0.5 KiB each).
    ring_per_partition: int = 5000
    # A resume reads at most this many records from Kafka; older cursors get
    # cursor_expired (subscribe again without a cursor).
    replay_records_max: int = 200_000
    replays_max: int = 4  # Kafka replays at once per process, each one consumer
    resume_timeout_s: float = 30.0  # a resume that cannot catch up in this is dropped
    connections_max: int = 2000  # sockets per process; beyond it close 1013
    # A connection that has had no frame for this long while the market moved gets a
    # cursor frame, so a quiet filter keeps a fresh cursor.
    cursor_every_s: float = 5.0
    # Cursor frames written per consumed batch at most: a whole quiet population due
    # at once is spread over several batches rather than one long stretch of writes.
    cursor_frames_per_batch: int = 100
    lookup_cache_max: int = 100_000  # loads and order owners kept in memory
    lookup_timeout_s: float = 2.0
    frame_chars_max: int = 16 * 1024  # a client frame; beyond it close 1009


CURSOR_CHECK_S = 1.0  # how often the hub looks for connections due a cursor frame

CONNECTIONS = Gauge("wlex_gateway_stream_connections", "Open /v1/stream connections.")
FRAMES = Counter("wlex_gateway_stream_frames_total", "Event frames queued to connections.")
DROPPED = Counter(
    "wlex_gateway_stream_dropped_connections_total",
    "Connections the gateway closed, by reason (slow_consumer, resume_timeout).",
    ["reason"],
)
RESUMES = Counter(
    "wlex_gateway_stream_resumes_total",
    "Subscriptions with a cursor, by where the replay came from (ring, kafka).",
    ["source"],
)
LAG = Histogram(
    "wlex_gateway_stream_event_lag_seconds",
    "From a market event's ts to its fan-out by the hub.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Frames:
    """The outbound frames of one connection (text, decoded once per event and shared
    by every connection that gets it): a bounded FIFO with one reader.

    Lighter than asyncio.Queue, which costs a future and a wake-up per frame: here the
    reader takes every frame waiting at once (take_all), and a push wakes it only when
    it sleeps. At 10,000 frames a second the queue was a tenth of the gateway's fan-out
    CPU. The bound counts frames not yet taken; a reader holds at most one taken batch,
    so a connection never has more than twice maxsize frames in memory.

    writer, when the connection has one (services.gateway.ws_protocol's try_write), lets
    put_many skip the queue: frames that find nothing waiting before them and the reader
    idle (it has written everything it took) are written to the socket at once, in one
    write, with no wake-up. Order is kept: anything queued, or taken and not yet
    written, goes first. The writer refuses when the socket's buffer is above its
    high-water mark, and the frames queue: a reader that does not read still meets the
    bound.
    """

    __slots__ = ("maxsize", "writer", "_items", "_reader", "_room")

    def __init__(self, maxsize: int, writer: Callable[[list[str]], bool] | None = None) -> None:
        self.maxsize = maxsize
        self.writer = writer
        self._items: deque[str] = deque()
        self._reader: asyncio.Future | None = None  # set while the reader waits
        self._room: asyncio.Future | None = None  # set while a put() waits for room

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, frame: str) -> None:
        """Queues (or writes) frame; asyncio.QueueFull when maxsize frames are waiting."""
        self.put_many([frame])

    def put_many(self, frames: list[str]) -> None:
        """Writes frames at once when the writer can and nothing is ahead of them, else
        queues them in order; asyncio.QueueFull, queueing none, when they do not fit."""
        if not frames:
            return
        reader = self._reader
        if reader is not None and not self._items and self.writer is not None:
            if self.writer(frames):
                return
        if len(self._items) + len(frames) > self.maxsize:
            raise asyncio.QueueFull
        self._items.extend(frames)
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)

    async def put(self, frame: str) -> None:
        """Queues frame, waiting for room first (a replay goes at its client's pace)."""
        while len(self._items) >= self.maxsize:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        self.put_nowait(frame)

    async def take_all(self) -> list[str]:
        """Every frame waiting, oldest first; waits for one when there is none."""
        while not self._items:
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        items = list(self._items)
        self._items.clear()
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)
        return items


class Listener:
    """The hub's side of one connection: who, which lanes, and its outbound queue."""

    def __init__(
        self,
        participant_id: str,
        subscription: feed.Subscription,
        queue_max: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self.participant_id = participant_id
        self.subscription = subscription
        self.queue = Frames(queue_max)
        self.on_overflow = on_overflow
        # Set while the connection's cursor is ahead of the hub on some partition (it
        # resumed on an instance that had read further): records below it are skipped.
        self.ahead: list[int] | None = None
        self.dropped = False
        # Frames of the batch the hub is publishing, handed over at its end (flush).
        self.pending: list[str] = []
        # The cursor of the last frame handed to it, and when (the hub's clock).
        self.cursor: str | None = None
        self.cursor_at = 0.0

    def flush(self) -> bool:
        """Hand the pending frames to the connection, in one write when it is idle;
        on a full queue mark the listener dropped. Never waits."""
        frames, self.pending = self.pending, []
        if self.dropped:
            return False
        try:
            self.queue.put_many(frames)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            DROPPED.labels("slow_consumer").inc()
            self.on_overflow()
            return False


class Lookups:
    """Rows the feed's entries need, fetched once per batch and kept in bounded LRU
    maps: load_id -> the load's public fields, bid / offer id -> its carrier."""

    _SQL = (
        "SELECT 'l' AS kind, load_id AS id, data::text AS v FROM load WHERE load_id = ANY($1::text[])"
        " UNION ALL SELECT 'o', offer_id, carrier_id FROM offer WHERE offer_id = ANY($1::text[])"
        " UNION ALL SELECT 'b', bid_id, carrier_id FROM bid_request WHERE bid_id = ANY($1::text[])"
    )

    def __init__(self, pool: asyncpg.Pool | None, cache_max: int, timeout_s: float) -> None:
        self._pool = pool
        self._max = cache_max
        self._timeout_s = timeout_s
        self.loads: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.owners: OrderedDict[str, str] = OrderedDict()

    def remember_owner(self, ref_id: str, carrier_id: str) -> None:
        self._put(self.owners, ref_id, carrier_id)

    async def fetch(self, ids: set[str]) -> None:
        missing = [i for i in ids if i not in self.loads and i not in self.owners]
        if not missing or self._pool is None:
            return
        try:
            rows = await self._pool.fetch(self._SQL, missing, timeout=self._timeout_s)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            # Lean entries (no load fields, private events unattributed) rather than
            # a feed that stops with the database.
            log.warning("stream lookups failed: %s", exc)
            return
        for kind, id_, value in rows:
            if kind == "l":
                self._put(self.loads, id_, feed.public_load(orjson.loads(value)))
            else:
                self._put(self.owners, id_, value)

    def _put(self, cache: OrderedDict, key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._max:
            cache.popitem(last=False)


class Hub:
    """One consumer of `market`, a ring, and the listeners. start(), then run(stop)."""

    def __init__(
        self, bootstrap: str, topic: str, pool: asyncpg.Pool | None, config: StreamConfig
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.config = config
        self.lookups = Lookups(pool, config.lookup_cache_max, config.lookup_timeout_s)
        self.positions: list[int] = []
        self.ring: feed.Ring | None = None
        self.listeners: set[Listener] = set()
        self._by_participant: dict[str, set[Listener]] = {}
        self._by_lane: dict[str | None, list[Listener]] = {}
        self._ahead: set[Listener] = set()
        # Listeners with pending frames in the batch being published (_flush).
        self._touched: list[Listener] = []
        self._replays = asyncio.Semaphore(config.replays_max)
        self._consumer: AIOKafkaConsumer | None = None
        self._cursor: str | None = None  # encode_cursor(positions), made on demand
        self._now = time.monotonic()  # the loop's clock, read once per batch
        self._cursor_due: deque[Listener] = deque()
        self._metrics = kafka_metrics("gateway")
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ consuming

    async def start(self) -> None:
        """Assigns every partition of `market` and starts at its end."""
        # partitions_for() waits for the topic's metadata; a producer that never sends.
        probe = make_producer(self.bootstrap, client_id="gateway-stream-probe")
        await probe.start()
        try:
            partitions = sorted(await probe.partitions_for(self.topic) or ())
        finally:
            await probe.stop()
        if not partitions:
            raise RuntimeError(f"no partitions for {self.topic}")
        tps = [TopicPartition(self.topic, p) for p in range(max(partitions) + 1)]
        # group_id None: no group, no commits; the feed's position lives in cursors.
        consumer = make_consumer(self.bootstrap, group_id=None, partitions=tps)  # type: ignore[arg-type]
        await consumer.start()
        await consumer.seek_to_end(*tps)
        self.positions = [await consumer.position(tp) for tp in tps]
        self.ring = feed.Ring(self.positions, self.config.ring_per_partition)
        self._consumer = consumer
        self.ready.set()
        log.info("stream hub on %s from %s", self.topic, self.positions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until stop is set; every batch is fanned out before the next fetch."""
        assert self._consumer is not None, "start() first"
        last_check = time.monotonic()
        while not stop.is_set():
            fetched = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            entries = await self.entries(fetched, live=True) if fetched else []
            self._now = now = time.monotonic()
            if fetched:
                self._metrics.consumed.labels(self.topic).inc(len(entries))
                # A batch's frames reach each socket in one write (Listener.flush).
                for entry in entries:
                    self._publish(entry)
                self._flush()
            if now - last_check >= CURSOR_CHECK_S:
                last_check = now
                self._find_cursor_due(now)
            if self._cursor_due:
                self._mark(self.config.cursor_frames_per_batch)

    async def entries(
        self, fetched: dict[TopicPartition, list[ConsumerRecord]], live: bool = False
    ) -> list[feed.Entry]:
        """The feed entries of a getmany result, in partition order. Records that fail
        to decode or validate become empty entries: the position still moves past them."""
        batch = decode_batch(fetched)
        ids = {i for e in batch.messages if (i := feed.needs_lookup(e)) is not None}
        if ids:
            await self.lookups.fetch(ids)
        good = {
            (r.partition, r.offset): m for r, m in zip(batch.records, batch.messages, strict=True)
        }
        out: list[feed.Entry] = []
        loads, owners = self.lookups.loads, self.lookups.owners
        for tp, records in fetched.items():
            for r in records:
                env = good.get((tp.partition, r.offset))
                if env is None:
                    out.append(feed.Entry(tp.partition, r.offset, None, None, None, None))
                else:
                    entry = feed.make_entry(tp.partition, r.offset, env, loads, owners)
                    out.append(entry)
                    if live and env["ts"]:
                        LAG.observe(max(0.0, time.time() - env["ts"] / 1000))
        return out

    def publish(self, entry: feed.Entry) -> None:
        """Advance the position past entry, keep it in the ring, queue it to every
        listener that may see it. Never waits."""
        self._publish(entry)
        self._flush()

    def _flush(self) -> None:
        touched, self._touched = self._touched, []
        for listener in touched:
            listener.flush()

    def _push(self, listener: Listener, data: str, cursor: str | None) -> bool:
        """Queue data, a frame carrying cursor, to listener (handed over at _flush)."""
        if listener.dropped:
            return False
        if not listener.pending:
            self._touched.append(listener)
        listener.pending.append(data)
        listener.cursor, listener.cursor_at = cursor, self._now
        return True

    def _publish(self, entry: feed.Entry) -> None:
        """publish() without the flush: the frames wait in the listeners' pending lists
        until the caller's _flush(), with no await in between."""
        p = entry.partition
        self.positions[p] = entry.offset + 1
        self._cursor = None
        assert self.ring is not None
        self.ring.append(entry)
        sent = 0
        if entry.private is not None:
            shared = None
            for listener in self._by_participant.get(entry.owner_id or "", ()):
                shared, ok = self._deliver(listener, entry, entry.private, shared)
                sent += ok
        if entry.public is not None:
            shared = None
            for listener in self._lane_listeners(entry.lane_key):
                if listener.participant_id != entry.owner_id:
                    shared, ok = self._deliver(listener, entry, entry.public, shared)
                    sent += ok
        if sent:
            FRAMES.inc(sent)
        if self._ahead:
            for listener in [x for x in self._ahead if self._caught_up(x)]:
                listener.ahead = None
                self._ahead.discard(listener)

    def cursor(self) -> str:
        if self._cursor is None:
            self._cursor = feed.encode_cursor(self.positions)
        return self._cursor

    def _deliver(
        self, listener: Listener, entry: feed.Entry, body: bytes, shared: str | None
    ) -> tuple[str | None, bool]:
        ahead = listener.ahead
        if ahead is not None:
            if entry.offset < ahead[entry.partition]:
                return shared, False  # it had this one before it resumed here
            pos = [max(h, a) for h, a in zip(self.positions, ahead, strict=True)]
            cursor = feed.encode_cursor(pos)
            return shared, self._push(listener, feed.frame(cursor, body).decode(), cursor)
        if shared is None:
            # Made and decoded once per event: every listener gets the same str.
            shared = feed.frame(self.cursor(), body).decode()
        return shared, self._push(listener, shared, self._cursor)

    def _caught_up(self, listener: Listener) -> bool:
        ahead = listener.ahead
        return ahead is None or all(h >= a for h, a in zip(self.positions, ahead, strict=True))

    def _lane_listeners(self, lane_key: str | None) -> list[Listener]:
        found = self._by_lane.get(lane_key)
        if found is None:
            found = [x for x in self.listeners if x.subscription.matches(lane_key)]
            self._by_lane[lane_key] = found
        return found

    def _find_cursor_due(self, now: float) -> None:
        """The listeners to send a cursor frame: no frame for cursor_every_s, and the
        market moved since their last one. A listener that gets events holds a fresh
        cursor already (every event frame carries one) and needs none: sending every
        listener a cursor at once was a thousand socket writes in one go."""
        cursor, every = self.cursor(), self.config.cursor_every_s
        self._cursor_due = deque(
            x for x in self.listeners
            if x.ahead is None and x.cursor != cursor and now - x.cursor_at >= every
        )  # fmt: skip

    def _mark(self, most: int) -> None:
        """Sends the current cursor to at most `most` of the listeners found due."""
        cursor = self.cursor()
        data = '{"type":"cursor","cursor":"' + cursor + '"}'
        due = self._cursor_due
        for _ in range(min(most, len(due))):
            listener = due.popleft()
            # Optional frames: never the reason a listener is dropped. One that got a
            # frame since it was found due holds a cursor already.
            if (
                listener in self.listeners
                and listener.ahead is None
                and listener.cursor_at <= self._now - self.config.cursor_every_s
                and listener.queue.qsize() < listener.queue.maxsize // 2
            ):
                self._push(listener, data, cursor)
        self._flush()

    # ------------------------------------------------------------------ listeners

    def register(self, listener: Listener, ahead: list[int] | None = None) -> None:
        self.listeners.add(listener)
        self._by_participant.setdefault(listener.participant_id, set()).add(listener)
        self._by_lane.clear()
        if ahead is not None and not all(
            h >= a for h, a in zip(self.positions, ahead, strict=True)
        ):
            listener.ahead = ahead
            self._ahead.add(listener)
        # Its answer (`subscribed`) carries the cursor it is live from.
        listener.cursor = self.cursor() if listener.ahead is None else None
        listener.cursor_at = self._now
        CONNECTIONS.set(len(self.listeners))

    def unregister(self, listener: Listener) -> None:
        if listener not in self.listeners:
            return
        self.listeners.discard(listener)
        same = self._by_participant.get(listener.participant_id)
        if same is not None:
            same.discard(listener)
            if not same:
                del self._by_participant[listener.participant_id]
        self._ahead.discard(listener)
        self._by_lane.clear()
        CONNECTIONS.set(len(self.listeners))

    def resubscribe(self, listener: Listener, subscription: feed.Subscription) -> None:
        listener.subscription = subscription
        self._by_lane.clear()

    async def attach(self, listener: Listener, cursor: list[int] | None) -> str:
        """Registers listener, first replaying what it missed since cursor (None: from
        now). Returns the cursor it is live from; the frames up to it are queued."""
        assert self.ring is not None
        if cursor is None:
            self.register(listener)
            return self.cursor()
        n = len(self.positions)
        if len(cursor) > n:
            raise feed.FeedError("invalid", "cursor names partitions the market does not have")
        # A partition added after the cursor was made is read from its start.
        pos = list(cursor) + [0] * (n - len(cursor))
        await self._check_not_ahead_of_log(pos)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.resume_timeout_s
        source = "ring"
        while True:
            if loop.time() > deadline:
                DROPPED.labels("resume_timeout").inc()
                raise TimeoutError("the resume did not catch up in time")
            if not self.ring.covers(pos):
                source = "kafka"
                await self._replay_from_kafka(listener, pos, deadline)
                continue
            frames = []
            for p in range(n):
                for entry in self.ring.since(p, pos[p], 500):
                    pos[p] = entry.offset + 1
                    body = entry.body_for(listener.participant_id, listener.subscription)
                    if body is not None:
                        frames.append(feed.frame(feed.encode_cursor(pos), body).decode())
            if not frames and all(a >= b for a, b in zip(pos, self.positions, strict=True)):
                # Nothing left in the ring past pos, and no await since we looked.
                self.register(listener, ahead=pos)
                RESUMES.labels(source).inc()
                return feed.encode_cursor(
                    [max(a, b) for a, b in zip(pos, self.positions, strict=True)]
                )
            for data in frames:
                await listener.queue.put(data)  # this client's pace, not the hub's

    async def _check_not_ahead_of_log(self, pos: list[int]) -> None:
        if all(a <= b for a, b in zip(pos, self.positions, strict=True)):
            return
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in range(len(pos))]
        ends = await self._consumer.end_offsets(tps)
        if any(pos[tp.partition] > ends[tp] for tp in tps):
            raise feed.FeedError("invalid", "the cursor is ahead of the market")

    async def _replay_from_kafka(self, listener: Listener, pos: list[int], deadline: float) -> None:
        """Reads the partitions where pos is below the ring's floor, from pos up to the
        floor, queueing the listener's frames; pos moves along."""
        assert self.ring is not None
        loop = asyncio.get_running_loop()
        async with self._replays:
            behind = [p for p in range(len(pos)) if pos[p] < self.ring.floor[p]]
            tps = [TopicPartition(self.topic, p) for p in behind]
            consumer = make_consumer(self.bootstrap, group_id=None, partitions=tps)  # type: ignore[arg-type]
            await consumer.start()
            try:
                starts = await consumer.beginning_offsets(tps)
                for tp in tps:
                    if pos[tp.partition] < starts[tp]:
                        raise feed.FeedError("cursor_expired", "the cursor is older than the log")
                    consumer.seek(tp, pos[tp.partition])
                read = 0
                while True:
                    active = [tp for tp in tps if pos[tp.partition] < self.ring.floor[tp.partition]]
                    if not active:
                        return
                    if loop.time() > deadline:
                        DROPPED.labels("resume_timeout").inc()
                        raise TimeoutError("the resume did not catch up in time")
                    fetched = await consumer.getmany(*active, timeout_ms=200, max_records=2000)
                    read += sum(len(r) for r in fetched.values())
                    if read > self.config.replay_records_max:
                        raise feed.FeedError(
                            "cursor_expired",
                            f"the cursor is more than {self.config.replay_records_max}"
                            " records behind; subscribe without a cursor",
                        )
                    for entry in await self.entries(fetched):
                        if entry.offset < pos[entry.partition]:
                            continue
                        pos[entry.partition] = entry.offset + 1
                        body = entry.body_for(listener.participant_id, listener.subscription)
                        if body is not None:
                            frame = feed.frame(feed.encode_cursor(pos), body).decode()
                            await listener.queue.put(frame)
            finally:
                await consumer.stop()
