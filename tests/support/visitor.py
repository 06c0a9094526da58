"""A person browsing a site through Envoy the way a browser does, without a browser: the page,
then what it loads (stylesheets and the fonts they name, scripts, images, the favicon), each
once per person as a browser's cache does, then what the page's script fetches; redirects
followed; the page as the Referer of what comes next. tests/test_reports.py replays whole
browsing sessions with it; tests/test_browser.py does the same with a real Chromium.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from html.parser import HTMLParser


class Subresources(HTMLParser):
    """The URLs an HTML page makes the browser load: stylesheets, icons, scripts and images."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") in ("stylesheet", "icon") and a.get("href"):
            self.urls.append(a["href"])
        elif tag in ("script", "img") and a.get("src"):
            self.urls.append(a["src"])


class Visitor:
    """One person: a browser (`user_agent`, `language`) at a client address that a proxy in front
    of Envoy names in X-Forwarded-For (`address`, or none), on `host`. `fetches` maps a script's
    path to what it fetches whenever a page runs it. `requests` counts what was sent."""

    def __init__(self, port: int, host: str, user_agent: str | None, language: str = "en-US,en;q=0.9",
                 address: str | None = None, fetches: dict[str, list[str]] | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.host = host
        self.common = {"Host": host, "Accept-Language": language}
        if user_agent is not None:
            self.common["User-Agent"] = user_agent
        if address:
            self.common["X-Forwarded-For"] = address
        self.fetches = fetches or {}
        self.cached: set[str] = set()
        self.page: str | None = None  # the URL of the page on screen
        self.requests = 0

    def send(self, method: str, path: str, referer: str | None, accept: str, body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {**self.common, "Accept": accept}
        if referer:
            headers["Referer"] = referer
        if content_type:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        self.requests += 1
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def open(self, path: str, referer: str | None = None) -> int:
        """Types or follows a URL (`referer`: where the link was, another site's too); returns the
        final status. Loads the page as a browser does."""
        status, headers, body = self.send("GET", path, referer, "text/html,*/*;q=0.8")
        while 300 <= status < 400 and "location" in headers:
            path = urllib.parse.urljoin(path, headers["location"])
            status, headers, body = self.send("GET", path, referer, "text/html,*/*;q=0.8")
        self.page = f"http://{self.host}{path}"
        if headers.get("content-type", "").startswith("text/html"):
            self.load_what_the_page_needs(body.decode("utf-8", "replace"))
        return status

    def click(self, path: str) -> int:
        """Follows a link on the page on screen."""
        return self.open(path, referer=self.page)

    def download(self, path: str) -> int:
        """Clicks a link to a file: the file comes, the page stays."""
        status, _, _ = self.send("GET", path, self.page, "*/*")
        return status

    def call(self, method: str, path: str, body: bytes | None = None) -> int:
        """What the page's script calls (fetch), JSON."""
        status, _, _ = self.send(method, path, self.page, "*/*", body, "application/json" if body else None)
        return status

    def load_what_the_page_needs(self, html: str) -> None:
        parser = Subresources()
        parser.feed(html)
        urls = parser.urls + ([] if "/favicon.ico" in self.cached or 'rel="icon"' in html else ["/favicon.ico"])
        for url in urls:
            if url in self.cached:
                continue
            self.cached.add(url)
            _, headers, data = self.send("GET", url, self.page, "*/*")
            if headers.get("content-type", "").startswith("text/css"):
                for font in re.findall(r"url\(['\"]?([^'\")]+)", data.decode("utf-8", "replace")):
                    if font not in self.cached:
                        self.cached.add(font)
                        self.send("GET", font, f"http://{self.host}{url}", "*/*")
        for script in parser.urls:
            for path in self.fetches.get(script, []):
                self.call("GET", path)

    def leave(self) -> None:
        self.conn.close()
