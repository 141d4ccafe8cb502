"""The outbound frame queue of a stream connection (services.gateway.hub.Frames)."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.hub import Frames


async def test_take_all_gives_every_waiting_frame_oldest_first():
    frames = Frames(8)
    for text in ("a", "b", "c"):
        frames.put_nowait(text)
    assert await frames.take_all() == ["a", "b", "c"]
    assert frames.qsize() == 0


async def test_take_all_waits_for_the_next_frame():
    frames = Frames(8)
    reader = asyncio.create_task(frames.take_all())
    await asyncio.sleep(0)
    assert not reader.done()
    frames.put_nowait("x")
    assert await asyncio.wait_for(reader, 1) == ["x"]


async def test_a_full_queue_refuses_the_frame_past_its_bound():
    frames = Frames(2)
    frames.put_nowait("a")
    frames.put_nowait("b")
    with pytest.raises(asyncio.QueueFull):
        frames.put_nowait("c")
    assert await frames.take_all() == ["a", "b"]
    frames.put_nowait("c")  # taken frames no longer count against the bound
    assert frames.qsize() == 1


async def test_put_waits_for_room_and_keeps_the_order():
    frames = Frames(1)
    frames.put_nowait("a")
    writer = asyncio.create_task(frames.put("b"))
    await asyncio.sleep(0)
    assert not writer.done()
    assert await frames.take_all() == ["a"]
    await asyncio.wait_for(writer, 1)
    assert await frames.take_all() == ["b"]


async def test_a_cancelled_reader_leaves_the_queue_usable():
    frames = Frames(4)
    reader = asyncio.create_task(frames.take_all())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    frames.put_nowait("a")
    assert await asyncio.wait_for(frames.take_all(), 1) == ["a"]


# ---------------------------------------------------------------------------- direct writes


class Socket:
    """A writer (ws_protocol's try_write) that records each write; refuses while full."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []
        self.full = False

    def __call__(self, texts: list[str]) -> bool:
        if self.full:
            return False
        self.writes.append(list(texts))
        return True


async def _idle_reader(frames: Frames) -> asyncio.Task:
    reader = asyncio.create_task(frames.take_all())
    await asyncio.sleep(0)  # it waits now: everything it took was written
    return reader


async def test_frames_for_an_idle_connection_go_out_in_one_write_in_order():
    socket = Socket()
    frames = Frames(8, socket)
    reader = await _idle_reader(frames)
    frames.put_many(["a", "b", "c"])
    assert socket.writes == [["a", "b", "c"]]
    assert frames.qsize() == 0 and not reader.done()
    reader.cancel()


async def test_frames_queue_behind_frames_already_waiting():
    socket = Socket()
    frames = Frames(8, socket)
    frames.put_many(["a"])  # no reader waits yet: queued
    frames.put_many(["b", "c"])
    assert socket.writes == []
    assert await frames.take_all() == ["a", "b", "c"]


async def test_a_full_socket_leaves_frames_queued_and_the_bound_holds():
    socket = Socket()
    frames = Frames(3, socket)
    reader = await _idle_reader(frames)
    socket.full = True
    frames.put_many(["a", "b"])
    assert socket.writes == [] and await asyncio.wait_for(reader, 1) == ["a", "b"]
    frames.put_many(["c", "d", "e"])
    with pytest.raises(asyncio.QueueFull):
        frames.put_many(["f"])  # none of it is queued
    assert await frames.take_all() == ["c", "d", "e"]


async def test_a_hub_batch_reaches_each_listener_in_one_write():
    from services.gateway import feed
    from services.gateway.hub import Hub, Listener, StreamConfig

    hub = Hub("unused:9092", "market", None, StreamConfig())
    hub.positions = [0]
    hub.ring = feed.Ring([0], 100)
    sockets, readers = [], []
    for lane in ("a>b>van-9.6", "c>d>van-9.6"):
        listener = Listener("c1", feed.Subscription(lanes=frozenset([lane])), 16, lambda: None)
        listener.queue = Frames(16, Socket())
        hub.register(listener)
        sockets.append(listener.queue.writer)
        readers.append(await _idle_reader(listener.queue))
    envs = [
        {"id": f"e{i}", "type": "load.rested", "v": 1, "ts": i, "key": key, "source": "m",
         "cause": None, "data": {"load_id": f"l{i}"}}
        for i, key in enumerate(["a>b>van-9.6", "c>d>van-9.6", "a>b>van-9.6", "a>b>van-9.6"])
    ]  # fmt: skip
    for offset, env in enumerate(envs):
        hub._publish(feed.make_entry(0, offset, env, {}, {}))
    assert sockets[0].writes == [] and sockets[1].writes == []  # nothing before the flush
    hub._flush()
    first, second = sockets[0].writes, sockets[1].writes
    assert len(first) == 1 and len(second) == 1  # one write per connection
    assert ['"id":"e0"' in f for f in first[0]] == [True, False, False]
    assert [f.split('"id":"')[1][:2] for f in first[0]] == ["e0", "e2", "e3"]
    assert [f.split('"id":"')[1][:2] for f in second[0]] == ["e1"]
    for reader in readers:
        reader.cancel()


# ---------------------------------------------------------------------------- cursor frames


def _hub_with(lanes: list[str], per_batch: int = 100):
    from services.gateway import feed
    from services.gateway.hub import Hub, Listener, StreamConfig

    hub = Hub("unused:9092", "market", None, StreamConfig(cursor_frames_per_batch=per_batch))
    hub.positions = [0]
    hub.ring = feed.Ring([0], 100)
    sockets = []
    for lane in lanes:
        listener = Listener("c1", feed.Subscription(lanes=frozenset([lane])), 16, lambda: None)
        listener.queue = Frames(16, Socket())
        hub.register(listener)
        sockets.append(listener.queue.writer)
    return hub, sockets


def _rested(offset: int, lane: str):
    from services.gateway import feed

    env = {"id": f"e{offset}", "type": "load.rested", "v": 1, "ts": offset, "key": lane,
           "source": "m", "cause": None, "data": {"load_id": f"l{offset}"}}  # fmt: skip
    return feed.make_entry(0, offset, env, {}, {})


def _cursor_frames(socket: Socket) -> list[str]:
    return [f for write in socket.writes for f in write if f.startswith('{"type":"cursor"')]


async def test_only_a_quiet_connection_gets_a_cursor_frame_once_the_market_moved():
    busy, quiet, quiet_too = "a>b>van-9.6", "c>d>van-9.6", "e>f>van-9.6"
    hub, (s_busy, s_quiet, s_quiet_too) = _hub_with([busy, quiet, quiet_too])
    readers = [await _idle_reader(listener.queue) for listener in hub.listeners]
    start = hub._now = 1000.0
    for listener in hub.listeners:
        listener.cursor_at = start
    hub._find_cursor_due(start + 6)  # the market has not moved: nobody is due
    assert not hub._cursor_due
    hub._now = start + 4  # events on the busy lane only, 4 s in
    hub._publish(_rested(0, busy))
    hub._publish(_rested(1, busy))
    hub._flush()
    hub._now = start + 4.5  # and the market moves on, on a lane nobody follows
    hub._publish(_rested(2, "x>y>van-9.6"))
    hub._flush()
    hub._find_cursor_due(start + 4.5)  # too soon for anyone
    assert not hub._cursor_due
    hub._now = start + 6
    hub._find_cursor_due(hub._now)
    hub._mark(100)
    assert _cursor_frames(s_busy) == []  # its last event frame, 2 s old, carries a cursor
    cursor = hub.cursor()
    for socket in (s_quiet, s_quiet_too):
        assert _cursor_frames(socket) == ['{"type":"cursor","cursor":"' + cursor + '"}']
    hub._now = start + 20
    hub._find_cursor_due(hub._now)  # the quiet ones hold the current cursor now
    assert [x.queue.writer for x in hub._cursor_due] == [s_busy]
    for reader in readers:
        reader.cancel()


async def test_cursor_frames_due_at_once_are_spread_over_batches():
    lanes = [f"o{i}>d>van-9.6" for i in range(5)]
    hub, sockets = _hub_with(lanes, per_batch=2)
    readers = [await _idle_reader(listener.queue) for listener in hub.listeners]
    hub._now = 1000.0
    for listener in hub.listeners:
        listener.cursor_at = hub._now
    hub._publish(_rested(0, "x>y>van-9.6"))  # the market moves; no listener sees it
    hub._flush()
    hub._now = 1010.0
    hub._find_cursor_due(hub._now)
    written = []
    for _ in range(3):
        hub._mark(hub.config.cursor_frames_per_batch)
        written.append(sum(len(_cursor_frames(s)) for s in sockets))
    assert written == [2, 4, 5]
    assert all(len(_cursor_frames(s)) == 1 for s in sockets)
    for reader in readers:
        reader.cancel()
