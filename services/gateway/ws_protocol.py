"""The gateway's uvicorn WebSocket protocol: uvicorn's sans-I/O protocol plus one ASGI
extension, `wlex.websocket.send_texts`, that writes many text frames in one socket write.

Why: uvicorn writes each ASGI `websocket.send` on its own, through Starlette's and
uvicorn's per-message layers (state checks, a Frame object, a join, a write). The market
fan-out sends ~10,000 small frames a second to 1,000 sockets, and those layers plus a
task wake-up per connection were most of the gateway's CPU. With the extension the hub
writes a connection's frames of a consumed batch itself, framed here, in one write.

The extension, in `scope["extensions"][SEND_TEXTS]` of every accepted-to-be WebSocket:

- `try_write(texts) -> bool`: frames and writes texts now, in order, in one write, and
  returns True; or writes nothing and returns False when it cannot now (the transport's
  buffer is above its high-water mark, the connection is closing or closed, or an
  extension such as permessage-deflate was negotiated): the caller keeps them queued.
- `send(texts)`: waits until the transport may be written (as uvicorn's own send does),
  then writes them in one write; ClientDisconnected when the connection is gone.

Only unfragmented text frames, server to client (unmasked, RFC 6455 5.1), are written
this way; handshake, ping / pong and close stay with uvicorn and websockets. Writing data
frames past websockets' ServerProtocol changes none of its state: it tracks the state of
the connection (open, closing) and of fragmented messages, and we check the first and
never fragment.
"""

from __future__ import annotations

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

SEND_TEXTS = "wlex.websocket.send_texts"

_TEXT_FIN = 0x81  # FIN + opcode 1 (text)


def encode_text_frames(texts: list[str]) -> bytes:
    """texts as consecutive RFC 6455 text frames from a server (unmasked), one buffer."""
    parts: list[bytes] = []
    for text in texts:
        data = text.encode()
        n = len(data)
        if n < 126:
            parts.append(bytes((_TEXT_FIN, n)))
        elif n < 65536:
            parts.append(bytes((_TEXT_FIN, 126)) + n.to_bytes(2, "big"))
        else:
            parts.append(bytes((_TEXT_FIN, 127)) + n.to_bytes(8, "big"))
        parts.append(data)
    return b"".join(parts)


class StreamWebSocketProtocol(WebSocketsSansIOProtocol):
    """WebSocketsSansIOProtocol with the SEND_TEXTS extension (module docstring)."""

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        # super() built the scope and created the ASGI task, which has not run yet: the
        # app sees the extension from its first step. A refused handshake has no scope.
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:
            scope["extensions"][SEND_TEXTS] = {"try_write": self.try_write, "send": self.send_texts}

    def _open(self) -> bool:
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        )

    def try_write(self, texts: list[str]) -> bool:
        if not texts:
            return True
        if not self.writable.is_set() or not self._open() or self.conn.extensions:
            return False
        self.transport.write(encode_text_frames(texts))
        return True

    async def send_texts(self, texts: list[str]) -> None:
        await self.writable.wait()
        if self.disconnected or not self._open():
            raise ClientDisconnected()
        if self.conn.extensions:  # a negotiated extension frames its own way
            for text in texts:
                self.conn.send_text(text.encode())
            self.transport.write(b"".join(self.conn.data_to_send()))
            return
        self.transport.write(encode_text_frames(texts))
