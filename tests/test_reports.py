"""What a Matomo user reads after a morning on a shop behind Envoy with the filter: a real
Matomo (tests/support/real_matomo.py), the demo shop (tests/support/shop.py), and the browsing
session of tests/support/session.py (four people with their pages, assets, a JSON API, an old
link, a 404, a 500, two downloads, a search engine, a campaign, a blog link, and Googlebot).

Each test creates its own site, replays the session through real Envoy, waits until the filter's
counters say Matomo has answered for every hit, then reads Matomo's reports (tests/support/
reports.py): visits, visitors, actions, bounces, pageviews, downloads, events, page titles (the
error pages' `404/URL = …`), channels, and the HTTP status and method custom dimensions. The
numbers are the ones Matomo's JavaScript tracker gives for the same pages (tests/test_browser.py
compares the two in a real browser), but for the events: each page's fetch of the cart is one.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.support import reports
from tests.support.edge import delivered, in_front_of
from tests.support.session import HOST, browse_the_shop, person
from tests.support.shop import Shop
from tests.support.visitor import Visitor

SECRET = "a-random-secret-shared-by-every-proxy"

# What Matomo reports for the session with the filter's defaults (see tests/support/session.py).
SESSION = reports.Reports(
    visits=4, visitors=4,
    # 9 pageviews + 2 downloads + 1 event (the add to cart): what the JavaScript tracker
    # records. The pages' own cart fetches (GET) are not tracked, so Dave, who read one page
    # and left, is a bounce, as to a JavaScript tracker.
    actions=12, bounces=1,
    pageviews=9, downloads=2,
    events=1, event_categories={"API": 1}, event_actions={"POST": 1},
    # Matomo keeps the campaign's other parameters (mtm_source) in the page URL.
    page_urls={"/": 2, "/?mtm_source=newsletter": 1, "/products/1": 2, "/products/2": 2, "/products/7": 1,
               "/checkout": 1},
    # The action name is the path; error pages get Matomo's title for them. The report shows
    # titles decoded, and not grouped: Matomo 5 splits no titles by default.
    page_titles={"/": 3, "/products/1": 2, "/products/2": 2, "404/URL = /products/7/From =": 1,
                 "500/URL = /checkout/From = http://shop.example/products/1": 1},
    channels={"search": 1, "campaign": 1, "direct": 1, "website": 1},
    download_urls={"shop.example/catalogue.pdf": 1, "shop.example/orders/42/invoice": 1},
    # Every action: 7 pages, 2 downloads, 1 event answered 200; one 404 and one 500 page.
    dimensions={"status": {"200": 10, "404": 1, "500": 1}, "method": {"GET": 11, "POST": 1}},
)


@pytest.fixture(scope="module")
def shop():
    s = Shop().start()
    yield s
    s.stop()


@pytest.fixture
def site(real_matomo, request) -> int:
    return real_matomo.add_site(f"reports {request.node.name}", [f"http://{HOST}"])


@pytest.fixture
def dimensions(real_matomo, site) -> dict[str, int]:
    """Action-scope custom dimensions for the status and the method; name → id."""
    return {"status": real_matomo.add_dimension(site, "HTTP status"),
            "method": real_matomo.add_dimension(site, "HTTP method")}


@pytest.mark.parametrize("token", [True, False], ids=["with a token", "without a token"])
def test_the_session_reads_as_the_people_browsed_it(shop, envoys, real_matomo, site, dimensions, token):
    """With a token, Matomo tells the people apart by their addresses (`cip`); without one it sees
    the proxy's address for all, and the filter's daily visitor id (`cid`) keeps them apart:
    Alice and Carol have the same browser and language, so Matomo could not tell them apart
    without it."""
    identity = {"token_auth": real_matomo.token} if token else {"visitor_id_secret": SECRET}
    envoy, port = in_front_of(shop, envoys, real_matomo, site, status_dimension=dimensions["status"],
                              method_dimension=dimensions["method"], **identity)
    counters = delivered(envoy, browse_the_shop(port))
    # What the filter made of 64 requests: Googlebot's 4 pages are sent, and Matomo drops them as
    # a bot's; the stylesheets, scripts, images, font and favicon are not, nor the cart reads and
    # robots.txt (GET of data).
    assert (counters["requests_tracked.pageview"], counters["requests_tracked.error_page"],
            counters["requests_tracked.download"], counters["requests_tracked.event"],
            counters["requests_ignored.asset"], counters["requests_ignored.no_content"],
            counters["requests_ignored.api"]) == (11, 2, 2, 1, 38, 1, 9)
    assert counters.get("hits_invalid", 0) == 0
    assert reports.read(real_matomo, site, dimensions) == SESSION


def test_with_api_calls_ignored_one_page_and_gone_is_a_bounce(shop, envoys, real_matomo, site, dimensions):
    """`api_requests_as: ignore`: the cart fetches and the add to cart are not tracked; what is
    left is the JavaScript tracker's pageviews and downloads, and Dave's visit is a bounce."""
    envoy, port = in_front_of(shop, envoys, real_matomo, site, token_auth=real_matomo.token,
                              api_requests_as="ignore", status_dimension=dimensions["status"],
                              method_dimension=dimensions["method"])
    delivered(envoy, browse_the_shop(port))
    assert reports.read(real_matomo, site, dimensions) == dataclasses.replace(
        SESSION, actions=11, bounces=1, events=0, event_categories={}, event_actions={},
        dimensions={"status": {"200": 9, "404": 1, "500": 1}, "method": {"GET": 11}})


def test_every_request_a_pageview_gives_the_seed_middlewares_numbers(shop, envoys, real_matomo, site):
    """`every_request_a_pageview`: what flask-matomo2 and asgi-matomo report, and this filter did
    before: each of the people's 51 requests a pageview named by its path (stylesheets, the
    cart API, the redirect, the PDFs), no downloads, no events, no error titles."""
    envoy, port = in_front_of(shop, envoys, real_matomo, site, token_auth=real_matomo.token,
                              every_request_a_pageview=True)
    delivered(envoy, browse_the_shop(port))
    r = reports.read(real_matomo, site)
    assert (r.visits, r.pageviews, r.actions, r.downloads, r.events, r.error_titles) == (4, 51, 51, 0, 0, {})
    assert (r.page_titles["/static/shop.css"], r.page_titles["/api/cart"], r.page_titles["/old/red-boots"]) == (4, 9, 1)


def test_without_a_token_people_matomo_cannot_tell_apart_stay_apart_and_one_person_stays_one(
        shop, envoys, real_matomo, site):
    """No token, and no proxy in front: every request comes from 127.0.0.1 to Envoy and to Matomo.
    Two people with Chrome 120 builds that Matomo reads alike (its visitor fingerprint has the
    address, the OS, the browser's name and major.minor version, and the language) are two
    visitors, by the filter's visitor id (address and whole User-Agent). One of them, answered
    by a second proxy with the same configuration (another pod), stays one visitor and one visit."""
    plugin = {"visitor_id_secret": SECRET}
    first, first_port = in_front_of(shop, envoys, real_matomo, site, trusted_hops=0, **plugin)
    second, second_port = in_front_of(shop, envoys, real_matomo, site, trusted_hops=0, **plugin)
    build = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.{} Safari/537.36"
    one, other = build.format("6099.109"), build.format("6099.71")
    sent = 0
    for user_agent, path in [(one, "/"), (other, "/products/1")]:
        visitor = person(first_port, user_agent, "en-US,en;q=0.9", None)
        assert visitor.open(path) == 200
        sent += visitor.requests
        delivered(first, sent)  # one visit at a time: Matomo creates visits without a lock
    again = person(second_port, one, "en-US,en;q=0.9", None)
    assert again.open("/products/2", referer=f"http://{HOST}/") == 200
    delivered(second, again.requests)
    visits = real_matomo.visits(site)
    assert len(visits) == 2
    assert {(v["visitIp"], v["browserName"], v["browserVersion"], v["operatingSystemName"], v["languageCode"])
            for v in visits} == {("127.0.0.1", "Chrome", "120.0", "GNU/Linux", "en-us")}
    pages = sorted([a["url"].split(HOST, 1)[1] for a in v["actionDetails"] if a["type"] == "action"] for v in visits)
    assert pages == [["/", "/products/2"], ["/products/1"]]
    r = reports.read(real_matomo, site)
    assert (r.visits, r.visitors, r.pageviews) == (2, 2, 3)


def test_a_request_without_a_user_agent_is_a_visit_of_an_unknown_browser(shop, envoys, real_matomo, site):
    """The bulk calls carry no User-Agent, since Matomo gives a hit without `ua` the bulk call's
    own: a request without one is recorded as an unknown browser, not under the filter's name
    (which Matomo took for a bot's, so such requests were lost)."""
    envoy, port = in_front_of(shop, envoys, real_matomo, site, visitor_id_secret=SECRET)
    nameless = Visitor(port, HOST, None)
    assert nameless.open("/") == 200
    delivered(envoy, nameless.requests)
    visit, = real_matomo.visits(site)
    assert (visit["browserCode"], visit["operatingSystemName"]) == ("UNK", "Unknown")
    assert [a["url"] for a in visit["actionDetails"] if a["type"] == "action"] == [f"http://{HOST}/"]
