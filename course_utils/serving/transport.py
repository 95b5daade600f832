"""The HTTP server's connection limits: how long a client may take to send its request's headers, how long an idle
keep-alive connection stays open, how large a header block may grow and how many connections run at once.

uvicorn 0.54 has the last three (``timeout_keep_alive``, ``h11_max_incomplete_event_size``, ``limit_concurrency``:
503 beyond it) but no header-read timeout: its keep-alive timer starts only after a first response, so a client
that opens a connection and sends its headers one byte every 2 s (slowloris), or nothing at all, holds it forever.
:class:`HeaderTimeoutProtocol` closes a connection whose request head is not complete ``header_timeout_s`` after
its first byte (or after the connection opened), as nginx's ``client_header_timeout`` does.

- :func:`server_config` — a ``uvicorn.Config`` with all four limits (``start_server`` and the command line use it).
"""

from __future__ import annotations

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeaderTimeoutProtocol", "server_config", "HEADER_TIMEOUT_S", "KEEP_ALIVE_S", "MAX_HEADER_BYTES"]

HEADER_TIMEOUT_S = 10.0  # to send a whole request head (request line + headers)
KEEP_ALIVE_S = 5  # an idle keep-alive connection between requests (uvicorn's default)
MAX_HEADER_BYTES = 16 * 1024  # h11's default, said out loud
MAX_CONNECTIONS = 1000  # connections + requests in flight; beyond, uvicorn answers 503


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (``header_timeout_s``)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # bytes of a request head that is not complete yet
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head arrived: the body has its own timeout (the routes')
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(
    app,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    keep_alive_s: int = KEEP_ALIVE_S,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
    **uvicorn_options,
):
    """A ``uvicorn.Config`` for ``app`` with the limits above (each checked; more options pass through)."""

    for name, value in (("header_timeout_s", header_timeout_s), ("keep_alive_s", keep_alive_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86_400:
            raise ValueError(f"{name} must be a number of seconds in (0, 86400), got {value!r}")
    for name, value in (("max_header_bytes", max_header_bytes), ("max_connections", max_connections)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(header_timeout_s)})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=keep_alive_s,
        h11_max_incomplete_event_size=max_header_bytes,
        limit_concurrency=max_connections,
        **uvicorn_options,
    )
