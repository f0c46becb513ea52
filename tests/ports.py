"""Free TCP ports on 127.0.0.1 for test servers and Ray nodes (other Ray clusters share this machine)."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now and never returned before by this process.

    Binding port 0 asks the kernel for a free port, but the socket is closed before the caller binds it,
    so two calls in a row can get the same number (CI once gave one port to both a raylet's object
    manager and its runtime-env agent, and Ray refused to start). Remembering what was handed out
    makes the ports of one node, and of one test session, distinct.
    """
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no new free port on 127.0.0.1 after 1000 tries")
