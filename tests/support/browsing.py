"""People browsing a website through Envoy as browsers do, for tests that count what Matomo makes
of them (visits, actions).

Each person has their own client address (sent in `X-Forwarded-For`, so Envoy needs
`use_remote_address` and `xff_num_trusted_hops: 1` to take it as the client), their own
realistic User-Agent and Accept-Language, and opens pages (`Person.path(n)`, answered as
`text/html` by the demo app) one click after another, a think time apart (none by default: a
burst), over several keep-alive connections at once, as a browser does (3 to 6). With several
Envoys (a fleet behind a load balancer), a person's connections go to different ones. All people
browse at the same time, their requests interleaved.
"""

from __future__ import annotations

import http.client
import ipaddress
import random
import threading
import time
from dataclasses import dataclass, field

HOST = "shop.example"

# Browsers as they announce themselves, with a current version; a person's version is that plus
# one per round of the list, so every person's User-Agent is distinct.
BROWSERS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 "
     "Safari/537.36", 120),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v}.2 "
     "Safari/605.1.15", 17),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0", 121),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/{v}.2 Mobile/15E148 Safari/604.1", 17),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile "
     "Safari/537.36", 120),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 "
     "Safari/537.36 Edg/{v}.0.0.0", 120),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0", 121),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 "
     "Safari/537.36", 119),
]
LANGUAGES = ["en-US,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "fr-FR,fr;q=0.9", "es-ES,es;q=0.9", "nl-NL,nl;q=0.9",
             "it-IT,it;q=0.9", "pt-BR,pt;q=0.9", "ja-JP,ja;q=0.9", "pl-PL,pl;q=0.9", "sv-SE,sv;q=0.9"]
# Client addresses from 198.18.0.0/15, the range kept for tests like this one.
FIRST_ADDRESS = ipaddress.IPv4Address("198.18.0.1")


@dataclass(frozen=True)
class Person:
    index: int
    ip: str
    user_agent: str
    language: str
    # Keep-alive connections the browser keeps open at once.
    connections: int

    def path(self, page: int) -> str:
        return f"/people/{self.index:03d}/page/{page:03d}"

    def headers(self, page: int) -> dict[str, str]:
        """A browser's request for a page; from the second page on, the previous one is the Referer."""
        headers = {"Host": HOST, "User-Agent": self.user_agent, "Accept-Language": self.language,
                   "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                   "X-Forwarded-For": self.ip}
        if page > 0:
            headers["Referer"] = f"http://{HOST}{self.path(page - 1)}"
        return headers


def people(count: int, seed: int = 21) -> list[Person]:
    """`count` distinct people: each their own address and User-Agent, 3 to 6 connections."""
    rng = random.Random(seed)
    crowd = []
    for i in range(count):
        template, version = BROWSERS[i % len(BROWSERS)]
        crowd.append(Person(index=i, ip=str(FIRST_ADDRESS + i),
                            user_agent=template.format(v=version + i // len(BROWSERS)),
                            language=LANGUAGES[i % len(LANGUAGES)], connections=rng.randint(3, 6)))
    return crowd


@dataclass
class Browsing:
    """What the people did: the paths answered 200, by person, and everything else."""

    sent: dict[int, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # time.monotonic() when the first request left and when the last answer came.
    started: float = 0.0
    finished: float = 0.0

    @property
    def total(self) -> int:
        return sum(len(paths) for paths in self.sent.values())


class Clicks:
    """One person's clicks: each call gives the next page and when it is clicked (a random `think`
    after the previous click), or None when every page is taken. Called by all their connections."""

    def __init__(self, pages: int, think: tuple[float, float], rng: random.Random):
        self.pages, self.think, self.rng = pages, think, rng
        self.page = 0
        self.at: float | None = None
        self.lock = threading.Lock()

    def __call__(self) -> tuple[int, float] | None:
        with self.lock:
            if self.page >= self.pages:
                return None
            now = time.monotonic()
            self.at = now if self.at is None else max(now, self.at + self.rng.uniform(*self.think))
            self.page += 1
            return self.page - 1, self.at


def browse(ports: list[int], crowd: list[Person], pages: int, think: tuple[float, float] = (0.0, 0.02),
           seed: int = 21) -> Browsing:
    """Every person opens `pages` pages, all people at once. A person clicks on to the next page a
    random `think` (seconds) after the previous click; (0, 0): opens them all at once. Each page
    goes on whichever of the person's connections takes it first, each a keep-alive connection to
    one of `ports` (connection k of person i to `ports[(i + k) % len(ports)]`, as a load balancer
    spreads a browser's connections), so one person's pages travel on several connections (and
    Envoys) at once."""
    result = Browsing(sent={p.index: [] for p in crowd})
    lock = threading.Lock()
    start = threading.Barrier(sum(p.connections for p in crowd) + 1)

    def connection(person: Person, k: int, next_click: Clicks) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ports[(person.index + k) % len(ports)], timeout=60)
        start.wait()
        try:
            while (click := next_click()) is not None:
                page, at = click
                time.sleep(max(0.0, at - time.monotonic()))
                path = person.path(page)
                try:
                    conn.request("GET", path, headers=person.headers(page))
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    status = repr(e)
                with lock:
                    if status == 200:
                        result.sent[person.index].append(path)
                    else:
                        result.failures.append(f"{path}: {status}")
        finally:
            conn.close()

    rng = random.Random(seed)
    threads = []
    for person in crowd:
        next_click = Clicks(pages, think, random.Random(rng.random()))
        threads += [threading.Thread(target=connection, args=(person, k, next_click)) for k in range(person.connections)]
    for t in threads:
        t.start()
    start.wait()
    result.started = time.monotonic()
    for t in threads:
        t.join()
    result.finished = time.monotonic()
    return result
