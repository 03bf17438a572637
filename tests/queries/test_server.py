"""How the gateway listens: several processes on one port (SO_REUSEPORT), a probe socket of its own."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from queries.server import shared_port, unix_socket


def test_several_processes_can_listen_on_the_gateway_port() -> None:
    first = shared_port("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = shared_port("127.0.0.1", port)
    try:
        first.listen()
        second.listen()
        assert second.getsockname()[1] == port
    finally:
        first.close()
        second.close()


def test_a_port_taken_by_another_program_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(SystemExit, match=r"cannot listen on 127\.0\.0\.1"):
            shared_port("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_a_probe_socket_left_by_a_killed_process_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run" / "gateway-1.sock"
    unix_socket(path).close()  # the file stays behind, as after a SIGKILL
    assert path.exists()
    replacement = unix_socket(path)
    try:
        replacement.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        replacement.close()
