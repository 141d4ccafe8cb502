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
