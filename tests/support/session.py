"""One morning on the shop (tests/support/shop.py), as its visitors browse it through Envoy: the
session tests/test_reports.py replays and `python -m tests.support.compare_reports` measures.

Four people, each at their own address behind a trusted proxy (X-Forwarded-For), and a crawler:

| who | browser | arrives from | does | a JavaScript tracker records |
|---|---|---|---|---|
| Alice | Chrome 120, Windows, en-US | a Google search | home, product 1, adds it to the cart, product 2, downloads the catalogue PDF | 3 pageviews, 1 download |
| Bob | Firefox 121, Linux, de-DE | a newsletter campaign (mtm_campaign) | home, an old link (301 to product 1), checkout, which fails (500) | 3 pageviews, one titled `500/URL = …` |
| Carol | the same browser and language as Alice | nowhere (typed) | a product that does not exist (404), home, downloads an invoice (an attachment) | 2 pageviews, one titled `404/URL = …`, 1 download |
| Dave | Safari 17, macOS, fr-FR | a blog post | product 2, then leaves | 1 pageview (a bounce) |
| Googlebot | | | robots.txt, every page | nothing: Matomo excludes bots |

Every page loads its stylesheet, font, script, logo and images (once per person: they are
cacheable), and every page in the shop's layout (all but the bare 500 page) fetches the cart from
the JSON API.
"""

from __future__ import annotations

import json

from tests.support.shop import CART_API, SCRIPT_PATH
from tests.support.visitor import Visitor

HOST = "shop.example"
CHROME_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36")
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.2 Safari/605.1.15")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

SEARCH = "https://www.google.com/search?q=red+boots"
CAMPAIGN = "/?mtm_campaign=Spring-Sale&mtm_source=newsletter"
BLOG = "https://blog.example.org/posts/7"


def person(port: int, user_agent: str, language: str, address: str) -> Visitor:
    """A visitor whose browser runs the shop's script (which fetches the cart)."""
    return Visitor(port, HOST, user_agent, language, address, fetches={SCRIPT_PATH: [CART_API]})


def browse_the_shop(port: int) -> int:
    """The session, through the Envoy listening on `port`; returns how many requests were sent."""
    alice = person(port, CHROME_WINDOWS, "en-US,en;q=0.9", "198.51.100.11")
    assert alice.open("/", referer=SEARCH) == 200
    assert alice.click("/products/1") == 200
    assert alice.call("POST", CART_API, json.dumps({"sku": "sku-1"}).encode()) == 200
    assert alice.click("/products/2") == 200
    assert alice.download("/catalogue.pdf") == 200

    bob = person(port, FIREFOX_LINUX, "de-DE,de;q=0.9", "198.51.100.12")
    assert bob.open(CAMPAIGN) == 200
    assert bob.click("/old/red-boots") == 200
    assert bob.click("/checkout") == 500

    carol = person(port, CHROME_WINDOWS, "en-US,en;q=0.9", "198.51.100.13")
    assert carol.open("/products/7") == 404
    assert carol.click("/") == 200
    assert carol.download("/orders/42/invoice") == 200

    dave = person(port, SAFARI_MAC, "fr-FR,fr;q=0.9", "198.51.100.14")
    assert dave.open("/products/2", referer=BLOG) == 200

    crawler = Visitor(port, HOST, GOOGLEBOT, "en", "66.249.66.1")
    assert crawler.download("/robots.txt") == 200
    for path in ["/", "/products/1", "/products/2", "/products/3"]:
        assert crawler.open(path) == 200

    people = [alice, bob, carol, dave, crawler]
    for p in people:
        p.leave()
    return sum(p.requests for p in people)
