"""A Matomo stand-in that records every bulk tracking call it receives.

Tests drive its behaviour (status, delay, refusing, closing mid-answer) and read what arrived;
`python -m tests.support.matomo` runs it alone and prints each hit, for `make run`.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    """One HTTP call Matomo received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def hits(self) -> list[dict[str, str]]:
        """The decoded parameters of each hit of a bulk call."""
        return [parse_hit(r) for r in self.json()["requests"]]


def parse_hit(query: str) -> dict[str, str]:
    """A hit (`?idsite=1&…`) as Matomo's PHP decodes it; repeated keys are an error."""
    assert query.startswith("?"), query
    pairs = urllib.parse.parse_qsl(query[1:], keep_blank_values=True, strict_parsing=True)
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"repeated parameter in {query}"
    return dict(pairs)


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    body: bytes | None = None  # default: a bulk success answer counting the hits
    close_mid_answer: bool = False
    # A web server's body limit (nginx `client_max_body_size`, PHP `post_max_size`): a larger
    # body is answered 413 and recorded in `refused`, not in `calls`.
    max_body_bytes: int | None = None


def api_answer(form: dict[str, list[str]]) -> bytes:
    """What Matomo's API answers the filter's start-up check (`API.getBulkRequest`): a
    superuser token, and every site asked for exists."""
    answers = []
    for key in sorted((k for k in form if k.startswith("urls[")), key=lambda k: int(k[5:-1])):
        query = urllib.parse.parse_qs(form[key][0])
        method = query.get("method", [""])[0]
        if method == "UsersManager.hasSuperUserAccess":
            answers.append({"value": True})
        elif method == "SitesManager.getSiteFromId":
            answers.append({"idsite": int(query.get("idSite", ["0"])[0]), "name": "stand-in"})
        else:
            answers.append([])
    return json.dumps(answers).encode()


class MatomoStandIn:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: bool = False):
        self.calls: list[Call] = []
        # Sizes of the bodies answered 413 (Behaviour.max_body_bytes).
        self.refused: list[int] = []
        # GETs without a query: an Envoy health check of /matomo.php, which Matomo answers 200.
        self.health_checks = 0
        # Calls to Matomo's API (index.php): the filter's start-up check of site and token.
        self.api_calls: list[Call] = []
        self.behaviour = Behaviour()
        self.echo = echo
        self._lock = threading.Condition()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One send per answer (see upstream.py).
            wbufsize = -1
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet; tests read calls instead
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                call = Call(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if self.path.split("?")[0].endswith("/index.php"):
                    stand_in.api_calls.append(call)
                    self._answer(200, api_answer(urllib.parse.parse_qs(body.decode("utf-8", "replace"))))
                    return
                b = stand_in.behaviour
                if self.command == "GET" and "?" not in self.path:
                    stand_in.health_checks += 1
                    self._answer(200, b"This resource is part of Matomo.", "text/html")
                    return
                if b.max_body_bytes is not None and length > b.max_body_bytes:
                    stand_in.refused.append(length)
                    self._answer(413, b"<html><h1>413 Request Entity Too Large</h1></html>", "text/html")
                    return
                stand_in._record(call)
                if b.delay:
                    time.sleep(b.delay)
                if b.close_mid_answer:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"sta")
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                answer = b.body
                if answer is None:
                    try:
                        n = len(json.loads(body)["requests"])
                    except (ValueError, KeyError, TypeError):
                        n = 0
                    answer = json.dumps({"status": "success", "tracked": n, "invalid": 0}).encode()
                self._answer(b.status, answer)

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            self._lock.notify_all()
        if self.echo:
            try:
                for hit in call.hits:
                    print("matomo hit:", json.dumps(hit, ensure_ascii=False), flush=True)
            except (ValueError, KeyError, AssertionError):
                print("matomo call:", call.path, call.body[:500], flush=True)

    @property
    def hits(self) -> list[dict[str, str]]:
        with self._lock:
            calls = list(self.calls)
        return [h for c in calls for h in c.hits]

    def wait_for_hits(self, n: int, timeout: float = 10.0) -> list[dict[str, str]]:
        """Waits until at least n hits arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                hits = [h for c in self.calls for h in c.hits]
                left = deadline - time.monotonic()
                if len(hits) >= n or left <= 0:
                    return hits
                self._lock.wait(left)

    def start(self) -> "MatomoStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    stand_in = MatomoStandIn(port=port, echo=True).start()
    print(f"Matomo stand-in on 127.0.0.1:{port}, printing every hit it receives", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        stand_in.stop()


if __name__ == "__main__":
    main()
