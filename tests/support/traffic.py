"""Clients and misbehaving servers for the robustness tests: timed requests, raw bytes over a
socket, HTTP/2 prior knowledge (h2c), an upstream that resets every connection, polling helpers."""

from __future__ import annotations

import http.client
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from tests.support import envoy as E

TRAP_FILTER_DIR = E.ROOT / "tests/support/trap_filter"
TRAP_WASM = E.ROOT / "target/trap-filter/wasm32-wasip1/release/trap_filter.wasm"


def timed_get(port: int, path: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, float, bytes]:
    """One GET on a fresh connection: (status, seconds, body)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, time.perf_counter() - start, body
    finally:
        conn.close()


def raw(port: int, data: bytes, *, timeout: float = 5.0, half_close: bool = False) -> bytes:
    """Sends bytes as they are and returns everything read until the peer closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        s.settimeout(timeout)
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int | None:
    """The status of a raw HTTP/1 response, None when nothing (or no status line) came back."""
    parts = response.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def h2c_get(port: int, path: str, extra_headers: list[tuple[str, str]] = (), timeout: float = 5.0) -> int:
    """One GET over cleartext HTTP/2 with prior knowledge; returns the :status."""
    return h2c_request(port, path, extra_headers, timeout)[0]


def h2c_request(port: int, path: str, extra_headers: list[tuple[str, str]] = (),
                timeout: float = 5.0) -> tuple[int | None, dict[str, str]]:
    """One GET over cleartext HTTP/2 with prior knowledge; returns the :status and the
    trailers received."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    status, trailers = None, {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(conn.data_to_send())
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"),
                   (":authority", f"h2.example:{port}"), *extra_headers]
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers, end_stream=True)
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    conn.close_connection()
                    s.sendall(conn.data_to_send())
                    return status, trailers
            s.sendall(conn.data_to_send())
        return status, trailers


def listening_socket(backlog: int = 64) -> socket.socket:
    """A TCP socket listening on a free loopback port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


class TrailerApp:
    """An HTTP/1.1 app answering every request with a chunked body and trailers, one of them
    `x-matomo-e-a` (Envoy passes trailers on to HTTP/2 clients)."""

    def __init__(self):
        self.sock = listening_socket()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                _, _, data = data.partition(b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ntransfer-encoding: chunked\r\n"
                             b"trailer: x-matomo-e-a, x-app-trailer\r\n\r\n"
                             b"5\r\nhello\r\n0\r\nx-matomo-e-a: secret-action\r\nx-app-trailer: kept\r\n\r\n")

    def stop(self):
        self.sock.close()


class ResettingServer:
    """Accepts connections and resets them at once (RST, via SO_LINGER 0), after reading a bit."""

    def __init__(self):
        self.sock = listening_socket()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                c.settimeout(0.5)
                c.recv(65536)
            except OSError:
                pass
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def stop(self):
        self._stop = True
        self.sock.close()


def wait_until(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Polls until check() is truthy; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_counter(envoy, name: str, at_least: int, timeout: float = 10.0) -> dict[str, int]:
    """Waits until wasmcustom.matomo.<name> >= at_least; returns all the filter's counters."""
    counters: dict[str, int] = {}

    def check():
        nonlocal counters
        counters = envoy.counters()
        return counters.get(name, 0) >= at_least

    wait_until(check, timeout)
    return counters


def settled_counters(envoy, quiet: float = 0.35, timeout: float = 10.0) -> dict[str, int]:
    """The filter's counters once they stop moving for `quiet` seconds (they flush every 100 ms)."""
    last = envoy.counters()
    deadline = time.monotonic() + timeout
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = envoy.counters()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return last


def log_lines(envoy, needle: str) -> list[str]:
    return [line for line in envoy.log().splitlines() if needle in line]


def build_trap_filter() -> Path:
    """The deliberately panicking module (tests/support/trap_filter); cargo makes it a no-op
    when it is up to date."""
    if True:
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--manifest-path",
                        str(TRAP_FILTER_DIR / "Cargo.toml"), "--target-dir", str(E.ROOT / "target/trap-filter")],
                       check=True, cwd=E.ROOT)
    return TRAP_WASM
