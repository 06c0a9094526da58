"""More tracker servers in front of the local Matomo, for the tests of what happens at Matomo's
edge: a second `php -S` serving the same Matomo tree (so the same database), as a Matomo that
grows adds web servers, and a proxy that records each call in Matomo but answers some late, as
a server does that finishes a call after the client gave up on it."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class PhpFrontEnd:
    """`php -S 127.0.0.1:<port>` with 4 workers over the Matomo tree, started the way
    ../shared/matomo/setup.sh starts the first one. `stop()` ends its process group (the server
    and its workers), as stop.sh does."""

    def __init__(self, matomo_dir: str, port: int, log: Path, php_options: tuple[str, ...] = ()):
        self.php_options = php_options
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.matomo_dir = matomo_dir
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "PhpFrontEnd":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["php", *self.php_options, "-d", "memory_limit=1G", "-d", "max_execution_time=0", "-d", "display_errors=0",
                 "-S", f"127.0.0.1:{self.port}", "-t", self.matomo_dir],
                env={**os.environ, "PHP_CLI_SERVER_WORKERS": "4"}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/matomo.php", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"php -S on {self.port} did not come up:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class LateAnswers:
    """An HTTP proxy in front of a tracker: it passes every call on and, for the first `late`
    distinct bulk bodies (POST …/matomo.php), holds Matomo's answer back for `delay` seconds,
    so the filter's call times out after Matomo has stored its hits. A body seen before (the
    filter's resend of that batch) is answered at once. `late_hits` counts the hits of the
    bodies held back: what Matomo may record twice."""

    def __init__(self, target: tuple[str, int], *, late: int, delay: float):
        self.late = late
        self.late_bodies: list[bytes] = []
        self.late_hits = 0
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                upstream = http.client.HTTPConnection(*target, timeout=60)
                upstream.request(self.command, self.path, body=body or None, headers={
                    k: v for k, v in self.headers.items() if k.lower() in ("host", "content-type", "user-agent")})
                answer = upstream.getresponse()
                payload = answer.read()
                upstream.close()
                if self.command == "POST" and self.path.split("?")[0].endswith("/matomo.php") \
                        and proxy._hold_back(body):
                    time.sleep(delay)
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", answer.getheader("content-type", "text/plain"))
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the filter gave up on this call

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _hold_back(self, body: bytes) -> bool:
        with self._lock:
            first_time = body not in self._seen
            self._seen.add(body)
            if first_time and len(self.late_bodies) < self.late:
                self.late_bodies.append(body)
                self.late_hits += body.count(b'"?')
                return True
            return False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
