"""Free loopback ports for stacks that must not collide with one already running."""

from __future__ import annotations

import random
import socket


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1 right now.

    Chosen below the kernel's ephemeral range: a port in that range that is free now can
    be handed to any outgoing connection (a client of another broker, say) in the seconds
    before our server binds it, and the server then dies with "Address already in use"."""
    low, high = 20000, _ephemeral_low() - count
    if high <= low:
        low, high = 10000, 20000 - count
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high)
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
