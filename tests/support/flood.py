"""A flood of requests from several clients at once, as fast as Envoy answers them, on keep-alive
connections: what an attacker without credentials can send. Counts the statuses it gets back
(0: the connection failed or closed without an answer)."""

from __future__ import annotations

import collections
import socket
import threading
import time


# The CPU attack: 58 KB of path and User-Agent that no rule matches, against the rules of the
# configuration example in docs/configuration.md plus eight typical User-Agent patterns (tests/test_abuse.py, make
# bench-instructions --abuse).
HOSTILE_PATH = b"/users/" + b"7" * 29_000 + b"/orders"
HOSTILE_HEADERS = [(b"user-agent", (b"Mozilla/5.0 " + b"(X11; Linux x86_64) AppleWebKit/537.36 " * 800)[:29_000])]
README_RULES = {
    "action_rules": [
        {"pattern": "/users/\\d+/orders", "action_name": "Users / orders"},
        {"pattern": "/users/\\d+", "action_name": "Users / profile", "params": {"e_c": "users"}},
    ],
    "strip_query_params": ["token", "email", "code"],
    "ignored_patterns": [".*/old/.*", "/static/"],
    "ignored_ua_patterns": [".*bot.*", ".*crawl.*", ".*spider.*", "curl", "Wget", "python-requests",
                            ".*HeadlessChrome.*", ".*[Mm]onitor.*"],
}


def read_response(sock: socket.socket, buffered: bytes) -> tuple[int, bytes]:
    """Reads one response (Content-Length bodies only, as Envoy and the demo app send them);
    returns its status and what was read past it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        rest += chunk
    return status, rest[length:]


def flood(port: int, request: bytes, *, clients: int = 8, seconds: float = 10.0) -> collections.Counter:
    """Sends `request` (raw HTTP/1.1 bytes, keep-alive) from `clients` connections for `seconds`;
    returns the statuses seen. A connection that fails is reopened."""
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        seen: collections.Counter = collections.Counter()
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    buffered = b""
                    while time.monotonic() < deadline:
                        sock.sendall(request)
                        status, buffered = read_response(sock, buffered)
                        seen[status] += 1
                        if status == 0:
                            break
            except OSError:
                seen[0] += 1
                time.sleep(0.01)
        with lock:
            statuses.update(seen)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def get(path: bytes, headers: list[tuple[bytes, bytes]] = (), host: bytes = b"shop.example") -> bytes:
    """A keep-alive GET as raw bytes."""
    lines = [b"GET " + path + b" HTTP/1.1", b"host: " + host, *[k + b": " + v for k, v in headers]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def one(port: int, request: bytes) -> int:
    """Sends one raw request on a new connection; returns its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock, b"")[0]
