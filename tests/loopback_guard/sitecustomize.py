"""Loaded by every Python process the tests start (through PYTHONPATH): refuse to open a
connection to any address outside loopback, so no test can reach AWS, a moto-invented
instance address or a Docker bridge address, even from a CLI subprocess."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable

ENV_FLAG = "CND_FAB_LOOPBACK_GUARD"


def is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX paths
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NonLoopbackConnect(ConnectionRefusedError):
    """A test process tried to connect outside 127.0.0.0/8 or ::1."""


def check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
        raise NonLoopbackConnect(f"loopback guard: refused a connection to {address!r}")


def guarded(real: Callable[[socket.socket, Any], Any]) -> Callable[[socket.socket, Any], Any]:
    """`real` (socket.connect or connect_ex), refusing every non-loopback address first."""

    def connect(self: socket.socket, address: Any) -> Any:
        check(self, address)
        return real(self, address)

    return connect


def install() -> None:
    socket.socket.connect = guarded(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)  # type: ignore[method-assign]


import os as _os  # noqa: E402

if _os.environ.get(ENV_FLAG) == "1":
    install()
