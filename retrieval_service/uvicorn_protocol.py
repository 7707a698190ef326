"""uvicorn's h11 protocol with TCP_NODELAY forced on every connection.

With ``--workers`` > 1 uvicorn hands the listening socket to spawned workers, where it comes back
with ``proto == 0``; asyncio then skips TCP_NODELAY on accepted connections, and Nagle plus delayed
ACK adds ~40 ms to every keep-alive response (measured here: 44 ms vs 1.7 ms per /search).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """Sets TCP_NODELAY before handing the connection to uvicorn."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
