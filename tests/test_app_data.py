"""Application-driven tracking data (x-matomo-* response headers), visitor identity, action
naming rules and query privacy, end to end through real Envoy."""

from __future__ import annotations

import json
import time

from tests.support.client import request, response_headers
from tests.support.traffic import settled_counters

BASE = {"matomo_url": "http://matomo.test/", "id_site": 3, "flush_interval": 0.1}


def app_sets(headers: dict) -> dict:
    """Request headers that make the demo app answer with these response headers."""
    return {"x-demo-response-headers": json.dumps(headers)}


def test_app_headers_set_the_hit_and_never_reach_the_client(start_envoy, matomo):
    env = start_envoy(BASE)
    status, seen = response_headers(env.port, "/play", app_sets({
        "x-matomo-action-name": "Game / play", "x-matomo-e-c": "game", "x-matomo-e-a": "play",
        "x-matomo-e-n": "level-1", "x-matomo-e-v": "3", "x-matomo-dimension4": "gold",
        "x-matomo-uid": "user-42", "x-matomo-pf-srv": "17", "x-matomo-cvar": '{"plan": "pro"}',
        "x-other": "kept"}))
    assert status == 200
    assert not [h for h in seen if h.startswith("x-matomo-")], seen
    assert seen["x-other"] == "kept"
    hit = matomo.wait_for_hits(1)[0]
    # An event: Matomo names it by e_n and ignores action_name, so the filter leaves it out.
    assert "action_name" not in hit
    assert (hit["e_c"], hit["e_a"], hit["e_n"], hit["e_v"]) == ("game", "play", "level-1", "3")
    assert hit["dimension4"] == "gold" and hit["uid"] == "user-42" and hit["pf_srv"] == "17"
    assert json.loads(hit["cvar"]) == {"1": ["plan", "pro"]}


def test_refused_params_are_not_sent_and_are_counted(start_envoy, matomo):
    env = start_envoy({**BASE, "token_auth": "real-token"})
    _, seen = response_headers(env.port, "/r", app_sets({
        "x-matomo-token-auth": "evil", "x-matomo-cip": "6.6.6.6", "x-matomo-idsite": "99",
        "x-matomo-url": "http://elsewhere/", "x-matomo-bogus": "1", "x-matomo-e-a": "ok"}))
    assert not [h for h in seen if h.startswith("x-matomo-")], seen
    hit = matomo.wait_for_hits(1)[0]
    assert hit["idsite"] == "3" and hit["cip"] == "127.0.0.1" and hit["e_a"] == "ok"
    assert hit["url"] == f"http://127.0.0.1:{env.port}/r" and "bogus" not in hit
    assert matomo.calls[0].json()["token_auth"] == "real-token"
    time.sleep(0.3)
    assert env.counters()["app_params_refused"] == 5


def test_app_ignore_and_ignored_requests_still_lose_the_headers(start_envoy, matomo):
    env = start_envoy({**BASE, "ignored_routes": ["/health"]})
    _, seen = response_headers(env.port, "/secret", app_sets({"x-matomo-ignore": "1"}))
    assert "x-matomo-ignore" not in seen
    _, seen = response_headers(env.port, "/health", app_sets({"x-matomo-e-a": "x"}))
    assert "x-matomo-e-a" not in seen
    request(env.port, "/tracked")
    matomo.wait_for_hits(1)
    time.sleep(0.4)
    assert [h["url"].rsplit("/", 1)[1] for h in matomo.hits] == ["tracked"]
    c = env.counters()
    assert c["requests_ignored.app"] == 1 and c["requests_ignored.route"] == 1


def test_a_custom_prefix_and_an_empty_one(start_envoy, matomo):
    env = start_envoy({**BASE, "response_header_prefix": "X-Track-"})
    _, seen = response_headers(env.port, "/p", app_sets({"x-track-e-a": "custom", "x-matomo-e-a": "old"}))
    assert "x-track-e-a" not in seen and seen["x-matomo-e-a"] == "old"
    assert matomo.wait_for_hits(1)[0]["e_a"] == "custom"
    env.stop()
    matomo.calls.clear()
    env = start_envoy({**BASE, "response_header_prefix": ""})
    _, seen = response_headers(env.port, "/p", app_sets({"x-matomo-e-a": "x"}))
    assert seen["x-matomo-e-a"] == "x", "an empty prefix turns the feature off"
    assert "e_a" not in matomo.wait_for_hits(1)[0]


def test_identity_from_request_headers_cookie_and_config(start_envoy, matomo):
    env = start_envoy({**BASE, "token_auth": "t", "uid_header": "x-jwt-sub", "cid_header": "x-visitor",
                       "bots": True, "dimension_headers": {"x-tenant": 1, "x-api-version": "dimension2"},
                       "read_visitor_cookie": True})
    request(env.port, "/me", headers={
        "x-jwt-sub": "alice", "x-visitor": "00112233aabbccdd", "x-tenant": "acme", "x-api-version": "v2",
        "cookie": "theme=dark; _pk_id.3.a1b2=0123456789abcdef.1700000000.; _pk_id.9.x=ffffffffffffffff.1."})
    hit = matomo.wait_for_hits(1)[0]
    assert hit["uid"] == "alice" and hit["cid"] == "00112233aabbccdd" and hit["_id"] == "0123456789abcdef"
    assert hit["dimension1"] == "acme" and hit["dimension2"] == "v2" and hit["bots"] == "1"


def test_action_rules_and_query_privacy(start_envoy, matomo):
    env = start_envoy({**BASE,
                       "routes_details": {"/users/1/orders": {"action_name": "Exact"}},
                       "action_rules": [{"pattern": r"/users/(\d+)/orders", "action_name": "Users / orders",
                                         "params": {"e_c": "orders"}},
                                        {"pattern": r"/(\w+)/", "action_name": "Section $1"}],
                       "strip_query_params": ["token", "email"]})
    request(env.port, "/users/42/orders?token=abc&page=2&email=a%40b.c",
            headers={"referer": "https://mail.example/in?email=a%40b.c&folder=x"})
    request(env.port, "/users/1/orders")
    request(env.port, "/docs/intro")
    hits = {h["url"].split(str(env.port), 1)[1]: h for h in matomo.wait_for_hits(3)}
    rule = hits["/users/42/orders?page=2"]
    assert rule["action_name"] == "Users / orders" and rule["e_c"] == "orders"
    assert rule["urlref"] == "https://mail.example/in?folder=x"
    assert hits["/users/1/orders"]["action_name"] == "Exact" and "e_c" not in hits["/users/1/orders"]
    assert hits["/docs/intro"]["action_name"] == "Section docs"
    assert "abc" not in json.dumps(matomo.calls[0].json()) and "a%40b" not in json.dumps(matomo.calls[0].json())


def test_the_demo_app_answers_html_unless_a_test_gives_a_content_type(upstream):
    import http.client

    def content_types(headers):
        conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return [v for k, v in resp.getheaders() if k.lower() == "content-type"]

    assert content_types({}) == ["text/html; charset=utf-8"]
    assert content_types(app_sets({"Content-Type": "application/json"})) == ["application/json"]


def test_what_a_request_becomes_follows_its_response(start_envoy, matomo):
    """Pages are pageviews; scripts, styles and images nothing; redirects nothing; a JSON write
    an event (a page's own reads nothing); a PDF a download; the app can say otherwise
    (x-matomo-track-as)."""
    env = start_envoy({**BASE, "api_event_category": "Shop API"})
    typed = lambda ct, **more: {"headers": app_sets({"content-type": ct, **more})}  # noqa: E731
    for path, kw in [("/page", {}), ("/app.js", typed("text/javascript")), ("/logo.png", typed("image/png")),
                     ("/old", {"headers": app_sets({"location": "/new"})}),
                     ("/api/cart", {**typed("application/json"), "method": "POST", "body": b"{}"}),
                     ("/api/cart-read", typed("application/json")),
                     ("/files/report.pdf", typed("application/pdf")),
                     ("/api/page", typed("application/json", **{"x-matomo-track-as": "pageview"}))]:
        request(env.port, path.replace("/old", "/status/302"), **kw)
    hits = {h["url"].split(str(env.port), 1)[1]: h for h in matomo.wait_for_hits(4)}
    assert sorted(hits) == ["/api/cart", "/api/page", "/files/report.pdf", "/page"], sorted(hits)
    assert hits["/page"]["action_name"] == "/page"
    cart = hits["/api/cart"]
    assert (cart["e_c"], cart["e_a"], cart["e_n"]) == ("Shop API", "POST", "/api/cart") and "action_name" not in cart
    assert hits["/files/report.pdf"]["download"] == hits["/files/report.pdf"]["url"]
    assert hits["/api/page"]["action_name"] == "/api/page" and "e_c" not in hits["/api/page"]
    c = settled_counters(env)
    assert (c["requests_ignored.asset"], c["requests_ignored.no_content"], c["requests_ignored.api"]) == (2, 1, 1), c
    assert (c["requests_tracked.pageview"], c["requests_tracked.event"], c["requests_tracked.download"]) == (2, 1, 1)


def test_a_download_in_range_requests_is_one_download(start_envoy, matomo):
    """A player or download manager fetches a file in parts (206); only the part from byte 0
    is the download, the later ones are more of the same."""
    env = start_envoy(BASE)
    for first, last in [(0, 99), (100, 199), (200, 299)]:
        request(env.port, "/status/206/big.pdf", headers=app_sets({
            "content-type": "application/pdf", "content-range": f"bytes {first}-{last}/300"}))
    hits = matomo.wait_for_hits(1)
    c = settled_counters(env)
    assert len(matomo.hits) == 1 and hits[0]["download"].endswith("/status/206/big.pdf"), matomo.hits
    assert (c["requests_tracked.download"], c["requests_ignored.no_content"]) == (1, 2), c
