"""The gateway's uvicorn WebSocket protocol (services.gateway.ws_protocol): many text
frames in one socket write, framed as RFC 6455 says, and nothing written when the
socket may not be written."""

from __future__ import annotations

import asyncio
import base64

import pytest
import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from services.gateway.ws_protocol import SEND_TEXTS, StreamWebSocketProtocol, encode_text_frames


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _frames(data: bytes) -> list[Frame]:
    """What a client parses from the server's bytes."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN)
    client.receive_data(data)
    return [e for e in client.events_received() if isinstance(e, Frame)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frames_are_rfc6455_frames_of_every_length(size):
    texts = ["é" * (size // 2) + "x" * (size % 2), "next"]
    frames = _frames(encode_text_frames(texts))
    assert [(f.opcode, f.fin, f.data.decode()) for f in frames] == [
        (Opcode.TEXT, True, t) for t in texts
    ]


async def _open_connection():
    """A protocol that completed the handshake of an app that waits; its extension."""
    got: dict = {}
    done = asyncio.Event()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        got["extension"] = scope["extensions"][SEND_TEXTS]
        await done.wait()

    config = uvicorn.Config(app, ws=StreamWebSocketProtocol, lifespan="off", log_config=None)
    config.load()
    protocol = StreamWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    key = base64.b64encode(b"0123456789abcdef").decode()
    protocol.data_received(
        f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    for _ in range(100):
        if "extension" in got:
            break
        await asyncio.sleep(0)
    assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 101")
    transport.writes.clear()
    return protocol, transport, got["extension"], done


async def test_several_waiting_frames_go_out_in_one_write_in_order():
    protocol, transport, extension, done = await _open_connection()
    assert extension["try_write"](["one", "two", "three"]) is True
    assert len(transport.writes) == 1
    assert [f.data for f in _frames(transport.writes[0])] == [b"one", b"two", b"three"]
    await extension["send"](["four", "five"])
    assert len(transport.writes) == 2
    assert [f.data for f in _frames(transport.writes[1])] == [b"four", b"five"]
    done.set()


async def test_nothing_is_written_while_the_socket_is_full_or_closed():
    protocol, transport, extension, done = await _open_connection()
    protocol.pause_writing()  # the transport's buffer is above its high-water mark
    assert extension["try_write"](["a"]) is False
    sent = asyncio.create_task(extension["send"](["b"]))
    await asyncio.sleep(0.01)
    assert not sent.done() and transport.writes == []
    protocol.resume_writing()
    await asyncio.wait_for(sent, 1)
    assert [f.data for f in _frames(transport.writes[0])] == [b"b"]
    protocol.connection_lost(None)
    assert extension["try_write"](["c"]) is False
    with pytest.raises(ClientDisconnected):
        await extension["send"](["c"])
    assert len(transport.writes) == 1
    done.set()
