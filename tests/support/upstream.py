"""The demo app behind Envoy: answers every path, `/status/<code>` with that code,
`?delay_ms=N` after N ms, and sets the response headers a request lists as JSON in
`x-demo-response-headers` (how tests play an app that sets `x-matomo-*` headers). It answers as a
website does, with `text/html; charset=utf-8`; a `content-type` among those headers replaces it
(how tests play a JSON API or an asset). `python -m tests.support.upstream PORT` runs it for
`make run`."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One send per answer: headers and body in two small writes stall ~40 ms on a reused
    # connection (Nagle against delayed ACK).
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if "delay_ms" in query:
            time.sleep(int(query["delay_ms"][0]) / 1000)
        status = 200
        parts = url.path.split("/")
        if len(parts) >= 3 and parts[1] == "status" and parts[2].isdigit():
            status = int(parts[2])
        body = f"demo app: {self.command} {self.path} -> {status}\n".encode("utf-8", "replace")
        headers = {"content-type": "text/html; charset=utf-8"}
        for name, value in json.loads(self.headers.get("x-demo-response-headers") or "{}").items():
            headers[name.lower()] = value  # a content-type given here replaces the default one
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer


class Server(ThreadingHTTPServer):
    # A listen backlog for bursts of new connections (Envoy's workers open many at once); with
    # socketserver's 5, connections beyond it time out and Envoy answers 503.
    request_queue_size = 1024


class Upstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.server = Server((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> "Upstream":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    Upstream(port=port).start()
    print(f"demo app on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()
