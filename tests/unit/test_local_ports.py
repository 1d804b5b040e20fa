"""Ports for the local stack's services: never from the range outgoing connections take, never twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from parascribe.local import emulators


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    floor = emulators._ephemeral_floor()
    if floor is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here: ports come from the OS")
    ports = [emulators.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(emulators.LISTEN_PORTS_FLOOR <= p < floor for p in ports)
    with socket.socket() as s:
        s.bind((emulators.LOOPBACK, ports[-1]))  # still free: nothing holds a port it hands out


def test_without_the_range_the_os_picks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(emulators, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert emulators._ephemeral_floor() is None
    port = emulators.free_port()
    assert 0 < port < 65536 and port in emulators._HANDED_OUT
