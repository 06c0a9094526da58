"""The filter in real Envoy, tracking into a real Matomo (tests/support/real_matomo.py says which):
what Matomo itself stores and reports for each hit field, identity, custom dimensions, events and
site search, 1000 requests over two workers, and the failures only a real server shows (a wrong
token, an unknown site, Matomo stopped and started again under load).

Each test creates its own site, sends requests through Envoy, waits until the filter's counters
say Matomo has answered for every hit, then reads what Matomo stored: the visitor log
(`Live.getLastVisitsDetails`), a report, or, for what the API does not show, SQL. Pages come from
the demo app as `text/html`, as a website's do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time

import pytest

from tests.support.client import load, request
from tests.support.real_matomo import wait_for_counters
from tests.support.traffic import log_lines

HOST = "shop.example"
CHROME_LINUX = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/120.0.0.0 Safari/537.36")
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


# Accept-Language values that make Matomo tell visitors apart (its visitor fingerprint includes
# the language), so that no visit reaches the 500 actions the visitor log shows of one visit.
LANGUAGES = ["en-us", "de-de", "fr-fr", "es-es", "it-it", "nl-nl", "pt-br", "ja-jp"]


def new_site(matomo, request) -> int:
    """A new Matomo site, http://shop.example, for this test alone."""
    return matomo.add_site(f"proxy {request.node.name}", [f"http://{HOST}"])


@pytest.fixture
def site(real_matomo, request):
    return new_site(real_matomo, request)


def start_tracking(start_envoy, matomo, site: int, concurrency: int = 1, envoy: dict | None = None, **plugin):
    """An Envoy whose filter tracks into `site` of that Matomo; `envoy` holds start_envoy options."""
    config = {"matomo_url": matomo.url, "id_site": site, "flush_interval": 0.2, **plugin}
    return start_envoy(config, concurrency=concurrency, **matomo.envoy_options(), **(envoy or {}))


@pytest.fixture
def tracking(start_envoy, real_matomo, site):
    """`tracking(concurrency=1, envoy=None, **plugin_options)`: an Envoy whose filter tracks into
    this test's site of the real Matomo; `envoy` holds start_envoy options (e.g. hcm_extra)."""
    return functools.partial(start_tracking, start_envoy, real_matomo, site)


def get(env, path: str, user_agent: str = CHROME_LINUX, **headers: str) -> None:
    """One GET through Envoy as a browser on shop.example, answered 200. Header names are given
    with underscores (`accept_language=…`)."""
    sent = {"Host": HOST, "User-Agent": user_agent, **{k.replace("_", "-"): v for k, v in headers.items()}}
    status, _ = request(env.port, path, headers=sent)
    assert status == 200, (path, status)


def app_sets(headers: dict) -> str:
    """The demo app's `x-demo-response-headers` value that makes it answer with these headers."""
    return json.dumps(headers)


def the_visit(real_matomo, site) -> dict:
    """The site's only visit."""
    visits = real_matomo.visits(site)
    assert len(visits) == 1, [(v["visitorId"], len(v["actionDetails"])) for v in visits]
    return visits[0]


def by_user_agent(visits: list[dict], needle: str) -> dict:
    """The one visit whose browser or OS (parsed from `ua` by Matomo) names `needle`."""
    found = [v for v in visits if needle in (v["browserName"], v["operatingSystemName"], v.get("browserCode"))]
    assert len(found) == 1, [(v["browserName"], v["operatingSystemName"]) for v in visits]
    return found[0]


# ---- a page view, field by field --------------------------------------------------------------


def test_a_page_view_as_matomo_records_it(tracking, real_matomo, site):
    env = tracking()
    path = "/shop/caf%C3%A9%20x?color=a%26b&empty=&x=%2F"
    get(env, path, accept_language="fr-CH, fr;q=0.9, en;q=0.8")
    wait_for_counters(env, hits_sent=1)
    visit = the_visit(real_matomo, site)
    action, = visit["actionDetails"]
    # url: percent-encoding and query exactly as received; action_name: decoded path.
    assert action["type"] == "action"
    assert action["url"] == f"http://{HOST}{path}"
    assert action["pageTitle"] == "/shop/café x"
    # ua: Matomo's device detection.
    assert (visit["browserName"], visit["browserVersion"], visit["operatingSystemName"], visit["deviceType"]) \
        == ("Chrome", "120.0", "GNU/Linux", "Desktop")
    # lang: the first language of Accept-Language; without GeoIP Matomo takes the country from it.
    assert visit["languageCode"] == "fr-ch" and visit["countryCode"] == "ch"
    assert visit["referrerType"] == "direct"
    assert visit["userId"] is None and visit["visitorType"] == "new"
    if real_matomo.local:
        # Without a token there is no `cip`: Matomo sees the proxy's address (loopback here).
        assert visit["visitIp"] == "127.0.0.1"


def test_the_page_title_is_what_action_name_says(tracking, real_matomo, site):
    env = tracking(routes_details={"/checkout": {"action_name": "Shop / Checkout"}})
    get(env, "/checkout?step=2")
    wait_for_counters(env, hits_sent=1)
    action, = the_visit(real_matomo, site)["actionDetails"]
    assert action["pageTitle"] == "Shop / Checkout"
    assert action["url"] == f"http://{HOST}/checkout?step=2"


def test_a_query_parameter_matomo_reads_as_a_search_makes_the_page_a_site_search(tracking, real_matomo, site):
    """Site search is on for a new site, with `q`, `query`, `s`, `search`, `k`, `keyword`, ... as
    keyword parameters: such a page is a search in Matomo's reports, not a page view."""
    env = tracking()
    get(env, "/products?q=boots&page=2")
    wait_for_counters(env, hits_sent=1)
    action, = the_visit(real_matomo, site)["actionDetails"]
    assert action["type"] == "search" and action["siteSearchKeyword"] == "boots"


def test_referrers_search_engine_website_and_campaigns(tracking, real_matomo, site):
    """One visitor per referrer (the referrer belongs to the visit): told apart by their browsers."""
    env = tracking()
    get(env, "/shoes", user_agent=CHROME_LINUX, referer="https://www.google.com/search?q=red+shoes")
    get(env, "/blog-visit", user_agent=FIREFOX_WINDOWS, referer="https://blog.example.org/posts/7")
    get(env, "/landing?mtm_campaign=Spring-Sale&mtm_kwd=boots&mtm_source=newsletter",
        user_agent="Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                   "Version/17.2 Safari/605.1.15")
    get(env, "/landing?utm_campaign=Winter&utm_term=coats&utm_source=mail&utm_medium=email",
        user_agent="Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
    wait_for_counters(env, hits_sent=4)
    visits = real_matomo.visits(site)
    assert len(visits) == 4
    search = by_user_agent(visits, "Chrome")
    assert (search["referrerType"], search["referrerName"], search["referrerKeyword"]) \
        == ("search", "Google", "red shoes")
    website = by_user_agent(visits, "Windows")
    assert (website["referrerType"], website["referrerName"], website["referrerUrl"]) \
        == ("website", "blog.example.org", "https://blog.example.org/posts/7")
    # Campaigns: Matomo lower-cases the name and removes its campaign parameters from the page url.
    mtm = by_user_agent(visits, "Safari")
    assert (mtm["referrerType"], mtm["referrerName"], mtm["referrerKeyword"]) == ("campaign", "spring-sale", "boots")
    assert mtm["actionDetails"][0]["url"] == f"http://{HOST}/landing?mtm_source=newsletter"
    utm = by_user_agent(visits, "Ubuntu")
    assert (utm["referrerType"], utm["referrerName"], utm["referrerKeyword"]) == ("campaign", "winter", "coats")
    assert utm["actionDetails"][0]["url"] == f"http://{HOST}/landing"


def test_server_time_is_stored_as_time_server_and_reported_by_page_performance(tracking, real_matomo, site):
    env = tracking()
    get(env, "/slow?delay_ms=300")
    wait_for_counters(env, hits_sent=1)
    # The visitor log shows no page load time for it: Matomo sums all six page timings, and a
    # server-side hit has only pf_srv.
    action, = the_visit(real_matomo, site)["actionDetails"]
    assert "pageLoadTime" not in action
    report = real_matomo.api("PagePerformance.get", idSite=site, period="day", date="today")
    assert 0.3 <= report["avg_time_server"] < 1.0, report  # seconds
    assert report["avg_page_load_time"] == report["avg_time_server"]
    if real_matomo.local:
        (time_server,), = real_matomo.sql(
            f"SELECT time_server FROM matomo_log_link_visit_action WHERE idsite = {site}")
        assert 300 <= int(time_server) < 1000


def test_the_visit_time_is_when_the_request_came_not_when_the_hit_arrived(tracking, real_matomo, site):
    """`cdt`: a hit that waited in the queue (here for a long flush_interval) is dated by its request."""
    env = tracking(flush_interval=10)
    asked = time.time()
    get(env, "/early")
    wait_for_counters(env, hits_sent=1, timeout=30)
    arrived = time.time()
    visit = the_visit(real_matomo, site)
    assert arrived - asked >= 5, "the hit was meant to wait in the queue"
    assert int(asked) - 1 <= visit["firstActionTimestamp"] <= asked + 1
    assert visit["actionDetails"][0]["timestamp"] == visit["firstActionTimestamp"]


# ---- with a token -------------------------------------------------------------------------------


def test_with_a_token_the_visitor_ip_is_the_client_and_a_spoofed_forwarded_for_does_not_win(
        tracking, real_matomo, site):
    """An edge Envoy (`use_remote_address`) trusting one proxy in front takes the client from
    X-Forwarded-For; one that trusts none ignores a client's own X-Forwarded-For."""
    trusting = tracking(token_auth=real_matomo.token,
                        envoy={"hcm_extra": {"use_remote_address": True, "xff_num_trusted_hops": 1}})
    edge = tracking(token_auth=real_matomo.token, envoy={"hcm_extra": {"use_remote_address": True}})
    get(trusting, "/via-proxy", user_agent=CHROME_LINUX, x_forwarded_for="198.51.100.7")
    get(edge, "/spoofed", user_agent=FIREFOX_WINDOWS, x_forwarded_for="203.0.113.66")
    wait_for_counters(trusting, hits_sent=1)
    wait_for_counters(edge, hits_sent=1)
    visits = real_matomo.visits(site)
    assert by_user_agent(visits, "Chrome")["visitIp"] == "198.51.100.7"
    assert by_user_agent(visits, "Windows")["visitIp"] == "127.0.0.1"


def test_user_id_and_a_forced_visitor_id(tracking, real_matomo, site):
    env = tracking(token_auth=real_matomo.token, uid_header="x-jwt-sub", cid_header="x-visitor")
    get(env, "/account", user_agent=CHROME_LINUX, x_jwt_sub="alice@example.com")
    get(env, "/cart", user_agent=FIREFOX_WINDOWS, x_visitor="00112233aabbccdd")
    wait_for_counters(env, hits_sent=2)
    visits = real_matomo.visits(site)
    alice = by_user_agent(visits, "Chrome")
    assert alice["userId"] == "alice@example.com"
    # Matomo derives the visitor id from the user id (enable_userid_overwrites_visitorid).
    assert alice["visitorId"] == hashlib.sha1(b"alice@example.com").hexdigest()[:16]
    assert by_user_agent(visits, "Windows")["visitorId"] == "00112233aabbccdd"


def test_custom_dimensions_from_request_headers_and_the_app(tracking, real_matomo, site):
    tenant = real_matomo.add_dimension(site, "tenant", scope="visit")
    plan = real_matomo.add_dimension(site, "plan", scope="action")
    env = tracking(token_auth=real_matomo.token, dimension_headers={"x-tenant": tenant})
    get(env, "/pricing", x_tenant="acme", x_demo_response_headers=app_sets({f"x-matomo-dimension{plan}": "gold"}))
    wait_for_counters(env, hits_sent=1)
    visit = the_visit(real_matomo, site)
    assert visit[f"dimension{tenant}"] == "acme"
    assert visit["actionDetails"][0][f"dimension{plan}"] == "gold"


def test_events_and_site_search_from_the_app(tracking, real_matomo, site):
    env = tracking(token_auth=real_matomo.token)
    get(env, "/api/cart", x_demo_response_headers=app_sets({
        "content-type": "application/json", "x-matomo-e-c": "cart", "x-matomo-e-a": "add",
        "x-matomo-e-n": "sku-42", "x-matomo-e-v": "19.5"}))
    get(env, "/search?term=red+shoes", x_demo_response_headers=app_sets({
        "x-matomo-search": "red shoes", "x-matomo-search-cat": "footwear", "x-matomo-search-count": "12"}))
    wait_for_counters(env, hits_sent=2)
    event, search = the_visit(real_matomo, site)["actionDetails"]
    assert event["type"] == "event"
    assert (event["eventCategory"], event["eventAction"], event["eventName"], event["eventValue"]) \
        == ("cart", "add", "sku-42", 19.5)
    assert search["type"] == "search"
    assert (search["siteSearchKeyword"], search["siteSearchCategory"], search["siteSearchCount"]) \
        == ("red shoes", "footwear", 12)


def test_bots_are_recorded_only_with_bots(tracking, real_matomo, site):
    quiet = tracking(token_auth=real_matomo.token)
    get(quiet, "/robots-page", user_agent=GOOGLEBOT)
    wait_for_counters(quiet, hits_sent=1)
    assert real_matomo.visits(site) == [], "Matomo drops a crawler's hit unless it carries bots=1"
    assert quiet.counters().get("hits_invalid", 0) == 0, "... and does not call it invalid"
    visible = tracking(token_auth=real_matomo.token, bots=True)
    get(visible, "/robots-page", user_agent=GOOGLEBOT)
    wait_for_counters(visible, hits_sent=1)
    visit = the_visit(real_matomo, site)
    assert visit["actionDetails"][0]["url"] == f"http://{HOST}/robots-page"
    assert visit["operatingSystemName"] == "Bot"


# ---- at load ----------------------------------------------------------------------------------


def stored_paths(matomo, site) -> list[str]:
    """The path of every action Matomo stored for the site."""
    return [a["url"].split(HOST, 1)[1] for a in matomo.actions(site)]


def test_1000_requests_over_two_workers_become_1000_actions_none_twice(tracking, real_matomo, site):
    env = tracking(concurrency=2, flush_interval=1)
    total = 1000
    # Eight visitors (each its own browser build: without a token the filter's visitor id is
    # per address and User-Agent), none with 500 actions the visitor log would cut.
    assert load(env.port, total, clients=8, headers=lambda k: {
        "Host": HOST, "User-Agent": f"{CHROME_LINUX} client/{k}", "Accept-Language": LANGUAGES[k % 4]}) == []
    counters = wait_for_counters(env, hits_sent=total, timeout=180)
    assert counters.get("hits_invalid", 0) == 0 and counters.get("hits_dropped", 0) == 0, counters
    assert counters.get("hits_resent_after_timeout", 0) == 0, counters
    if real_matomo.local:
        (rows,), = real_matomo.sql(f"SELECT COUNT(*) FROM matomo_log_link_visit_action WHERE idsite = {site}")
        assert int(rows) == total, counters
    paths = stored_paths(real_matomo, site)
    assert sorted(paths) == [f"/load/{i:04d}" for i in range(total)]
    print(f"\n{total} requests: {counters['batches_sent']} bulk calls, "
          f"{len(real_matomo.visits(site))} visits in Matomo")


# ---- failures only a real Matomo shows -----------------------------------------------------------


def test_a_wrong_token_is_found_at_start_and_never_sent_again(tracking, real_matomo, site):
    """With a token the filter checks it at start (one API.getBulkRequest). Matomo answers 401
    to a wrong one, and counts the call as a failed login of the proxy's address: 20 within an
    hour block that address for every token (its brute-force protection). So the filter logs
    the refusal as an error, sends no hit with that token (each would be one more failed login),
    drops them, counted under `hits_dropped.refused`, and checks again every 10 minutes."""
    if real_matomo.local:
        real_matomo.sql("DELETE FROM matomo_brute_force_log WHERE ip_address = '127.0.0.1'")
    env = tracking(token_auth="not-a-valid-token-0123456789abcdef", batch_size=3, flush_interval=1)
    for i in range(3):
        get(env, f"/wrong-token/{i}")
    counters = wait_for_counters(env, **{"hits_dropped.refused": 3})
    assert counters.get("batches_sent", 0) == 0 and counters.get("hits_sent", 0) == 0, counters
    assert log_lines(env, f"site {site}: Matomo refused the token (invalid or expired)"), env.log()[-2000:]
    assert log_lines(env, "dropped 3 hits instead of sending them")
    assert real_matomo.visits(site) == []
    if real_matomo.local:
        failed = real_matomo.sql("SELECT COUNT(*) FROM matomo_brute_force_log WHERE ip_address = '127.0.0.1'")
        assert int(failed[0][0]) == 1, "the start-up check only"
        real_matomo.sql("DELETE FROM matomo_brute_force_log WHERE ip_address = '127.0.0.1'")


def test_an_unknown_site_is_found_at_start_and_its_hits_dropped_as_invalid(start_envoy, real_matomo):
    """With a token, the start-up check says the site does not exist. Matomo then answers a bulk
    call of such hits 200 with every hit invalid: the filter logs an error naming the likely
    causes and counts the hits under `hits_dropped.invalid` (and `hits_dropped`, which the
    alert of docs/operations.md watches), not as sent."""
    unknown = max(real_matomo.api("SitesManager.getAllSitesId")) + 1000
    env = start_envoy({"matomo_url": real_matomo.url, "id_site": unknown, "flush_interval": 0.2, "batch_size": 2,
                       "token_auth": real_matomo.token}, **real_matomo.envoy_options())
    get(env, "/nobody-1")
    get(env, "/nobody-2")
    counters = wait_for_counters(env, **{"hits_dropped.invalid": 2})
    assert counters["batches_sent"] == 1 and counters["hits_dropped"] == 2 and counters.get("hits_sent", 0) == 0
    assert log_lines(env, f"Matomo: site {unknown} does not exist"), env.log()[-2000:]
    assert log_lines(env, "Matomo found all 2 hits of a batch invalid")
    if real_matomo.local:
        assert real_matomo.sql(f"SELECT COUNT(*) FROM matomo_log_visit WHERE idsite = {unknown}") == [["0"]]


def test_matomo_stopped_and_started_again_under_load_loses_nothing(start_envoy, local_matomo, request):
    """Matomo (web server and database) goes away while requests flow and comes back within the
    retry window. Envoy answers the filter's calls itself meanwhile, 503 (connection refused),
    and the filter logs "Matomo unreachable (Envoy answered 503: upstream connect error …);
    retrying N hits in 500ms" (at most one line per 10 s), counts `batches_failed` and
    `hits_retried`, retries each lane's batch with backoff, and once Matomo is back every hit
    arrives: nothing dropped, nothing twice but for calls that timed out after Matomo stored
    them (counted in `hits_resent_after_timeout`; a call cut off when Matomo stops records
    nothing, its bulk calls being one transaction)."""
    matomo = local_matomo
    site = new_site(matomo, request)
    env = start_tracking(start_envoy, matomo, site, concurrency=2, batch_size=20)
    sent: list[str] = []
    stop = threading.Event()

    def steady():
        i = 0
        while not stop.is_set():
            path = f"/outage/{i:04d}"
            # Four visitors (their own browser builds), none with the 500 actions the log would cut.
            get(env, path, user_agent=f"{CHROME_LINUX} client/{i % 4}", accept_language=LANGUAGES[i % 4])
            sent.append(path)
            i += 1
            time.sleep(0.02)

    sender = threading.Thread(target=steady)
    sender.start()
    try:
        time.sleep(2)
        matomo.stop()
        down_at = len(sent)
        time.sleep(4)
        matomo.start()
        time.sleep(2)
    finally:
        stop.set()
        sender.join()
    assert len(sent) - down_at > 50, "requests kept flowing while Matomo was down"
    counters = wait_for_counters(env, hits_sent=len(sent), timeout=60)
    assert counters.get("hits_dropped", 0) == 0 and counters.get("hits_invalid", 0) == 0
    assert counters["batches_failed"] >= 1 and counters["hits_retried"] >= 1
    assert log_lines(env, "Matomo unreachable (Envoy answered 503: upstream connect error")
    paths = stored_paths(matomo, site)
    twice = len(paths) - len(set(paths))
    assert set(paths) == set(sent), "none lost"
    assert twice <= counters["hits_resent_after_timeout"], "none twice but what timed out"
    print(f"\noutage: {len(sent)} requests, {counters['batches_failed']} failed calls, "
          f"{counters['hits_retried']} hits retried, {len(paths)} actions in Matomo, {twice} twice, "
          f"hits_resent_after_timeout {counters['hits_resent_after_timeout']}")
