"""free_port: never the same port twice, and not one in use on IPv6's '::' (CI: a service's
Prometheus port was free on 127.0.0.1 but not where the service binds)."""
from __future__ import annotations

import socket

import pytest

from lkmedia.dev import stack


def test_ports_are_never_handed_out_twice() -> None:
    ports = [stack.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_port_listened_on_at_ipv6_any_is_not_free(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as busy:
        busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # (127.0.0.1 stays free)
        busy.bind(("::", 0))
        busy.listen()
        port = busy.getsockname()[1]
        picks = iter([port, port, port + 1 if port < 65535 else port - 1])
        monkeypatch.setattr(stack.random, "randint", lambda a, b: next(picks))
        monkeypatch.setattr(stack, "_GIVEN", set())
        assert stack.free_port() != port
