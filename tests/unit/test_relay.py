"""The published-port relay against a listener like slirp's (a backlog of 1, accepting at its own pace): a burst of
clients all get through at once, where straight to such a listener some wait for a SYN retransmit."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from components.drivers.qemu import relay

CLIENTS = 100


@pytest.fixture
def slirp_like():
    """An echo-once server listening with a backlog of 1 that accepts one connection every 5 ms."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(None)
        with conn:
            data = b""
            while chunk := conn.recv(1024):
                data += chunk
            conn.sendall(b"pong:" + data)

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
            time.sleep(0.005)

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def request(port: int, payload: bytes) -> tuple[float, bytes]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)  # half-closed: the answer must still come back
        answer = b""
        while chunk := conn.recv(1024):
            answer += chunk
    return time.monotonic() - started, answer


def burst(port: int) -> list[tuple[float, bytes]]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: request(port, b"ping%d" % i), range(CLIENTS)))


def free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_burst_through_the_relay_gets_through_at_once(slirp_like):
    relays, port = relay.Relays(), free()
    relays.add(port, slirp_like)
    results = burst(port)
    assert [answer for _, answer in results] == [b"pong:ping%d" % i for i in range(CLIENTS)]
    assert max(seconds for seconds, _ in results) < 1.0  # nobody waited for a retransmitted SYN
    relays.remove(port)
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_taken_port_is_an_error_not_a_silent_relay(slirp_like):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            relay.Relays().add(taken.getsockname()[1], slirp_like)


def test_straight_to_such_a_listener_a_burst_waits_for_retransmits_or_is_reset(slirp_like):
    """The cause, measured: what the relay test would see without the relay (so it cannot pass by accident)."""

    def attempt(i: int) -> float:
        try:
            return request(slirp_like, b"ping%d" % i)[0]
        except OSError:
            return float("inf")  # reset: the listener dropped the last ACK of a connection the client thought open

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert max(pool.map(attempt, range(CLIENTS))) >= 0.9
