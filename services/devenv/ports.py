"""Free loopback ports for stacks that must not collide with one already running."""

from __future__ import annotations

import random
import socket


def free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free block of loopback ports")
