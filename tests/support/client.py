"""Plain HTTP clients for the tests: one request with http.client, many at once over keep-alive
connections, or raw bytes over a socket (for header bytes no HTTP library will send)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Callable


def request(port: int, path: str = "/", method: str = "GET", headers: dict | None = None,
            body: bytes | None = None, timeout: float = 10.0) -> tuple[int, float]:
    """Sends one request to 127.0.0.1:port; returns (status, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - start
    finally:
        conn.close()


def load(port: int, total: int, clients: int, path: str = "/load",
         headers: Callable[[int], dict] = lambda k: {}) -> list[int]:
    """GETs `path/0000` to `path/<total-1>` from `clients` keep-alive connections at once, client
    k sending `headers(k)`; returns the statuses other than 200."""
    errors: list[int] = []

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(k, total, clients):
            conn.request("GET", f"{path}/{i:04d}", headers=headers(k))
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors.append(r.status)
        conn.close()

    at_once(clients, client)
    return errors


def at_once(n: int, client: Callable[[int], None]) -> None:
    """Runs client(0) … client(n-1) in n threads at once; returns when all are done."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def response_headers(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, dict[str, str]]:
    """Sends one GET; returns (status, response headers with lower-case names)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 10.0) -> int:
    """Sends raw request bytes; returns the response status (0 if the connection closed first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        while b"\r\n" not in received:
            chunk = s.recv(4096)
            if not chunk:
                break
            received += chunk
    first = received.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
