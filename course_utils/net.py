"""Local network plumbing: a free TCP port for a server or a process group started on this machine."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it: bind to port 0).

    Another process may take it before the caller binds it; the window is small enough for tests and for
    ``torch.distributed``'s rendezvous on one machine.
    """
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, got {host!r}")
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
