"""A real browser through Envoy: Debian's headless Chromium (tests/support/browser.py) visits the
shop, whose pages run Matomo's JavaScript tracker into one site while the filter tracks the same
requests into another. The filter must report the pageviews, downloads, visits and error titles
the JavaScript tracker does, and as many events: the tracker's is the page script's own for the
add to cart, the filter's the API write behind it (the pages' own cart reads are not tracked).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import unavailable
from tests.support import browser, reports
from tests.support.edge import in_front_of, settled
from tests.support.session import HOST
from tests.support.shop import Shop

SECRET = "a-random-secret-shared-by-every-proxy"


@pytest.fixture
def chromium():
    if not browser.available():
        unavailable(browser.MISSING)


def downloads_in(matomo, site: int) -> int:
    return sum(a["type"] == "download" for v in matomo.visits(site) for a in v["actionDetails"])


def test_the_filter_records_the_pageviews_and_downloads_of_matomos_javascript_tracker(
        chromium, real_matomo, envoys, request):
    tracker_site = real_matomo.add_site(f"javascript tracker {request.node.name}", [f"http://{HOST}"])
    proxy_site = real_matomo.add_site(f"filter {request.node.name}", [f"http://{HOST}"])
    shop = Shop(tracker=(real_matomo.url, tracker_site)).start()
    try:
        envoy, port = in_front_of(shop, envoys, real_matomo, proxy_site, visitor_id_secret=SECRET)
        with browser.chromium(HOST, port) as driver:
            browser.browse(driver, HOST)
            # The tracker sends a clicked download's hit as the link is followed, without a callback.
            deadline = time.monotonic() + browser.WAIT
            while downloads_in(real_matomo, tracker_site) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
        settled(envoy)
    finally:
        shop.stop()
    tracker, proxy = reports.read(real_matomo, tracker_site), reports.read(real_matomo, proxy_site)
    print(f"\n{'':22}{'JavaScript tracker':>20}{'the filter':>12}")
    for name in ["visits", "visitors", "actions", "pageviews", "downloads", "events", "error_titles"]:
        print(f"{name:22}{str(getattr(tracker, name)):>20}{str(getattr(proxy, name)):>12}")
    # Home, product 1, product 2, product 1 again (the old link's target), the 404 page, home.
    assert (tracker.visits, tracker.visitors, tracker.pageviews, tracker.downloads) == (1, 1, 6, 2)
    assert (proxy.visits, proxy.visitors, proxy.pageviews, proxy.downloads) == (1, 1, 6, 2)
    assert proxy.page_urls == tracker.page_urls
    assert proxy.download_urls == tracker.download_urls
    assert proxy.error_titles == tracker.error_titles == {"404/URL = /nowhere/From =": 1}
    # The tracker's one event is the page's own; the filter's the API write behind it.
    assert tracker.event_categories == {"Cart": 1}
    assert proxy.event_actions == {"POST": 1}
    assert (proxy.actions, proxy.events) == (tracker.actions, tracker.events) == (9, 1)
