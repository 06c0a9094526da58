"""The same module as Envoy's wasm access logger (`envoy.access_loggers.wasm`): one call per
finished request, no per-request context. The start comes from Envoy's `request.time`, and
`pf_srv` runs from there to the end of the request; the app's headers are read but reach the
client."""

from __future__ import annotations

import json
import time

from tests.support.client import raw, request, response_headers
from tests.support.traffic import settled_counters

BASE = {"matomo_url": "http://matomo.test/", "id_site": 3, "flush_interval": 0.1}


def test_a_hit_carries_every_field(start_envoy, matomo):
    env = start_envoy({**BASE, "status_dimension": 1, "method_dimension": 2}, access_log=True)
    before = time.time()
    status, _ = request(env.port, "/shop/caf%C3%A9?q=1", headers={
        "User-Agent": "Mozilla/5.0 (test)", "Accept-Language": "de-CH", "Referer": "https://ref.example/"})
    assert status == 200
    hit = matomo.wait_for_hits(1)[0]
    assert hit["url"] == f"http://127.0.0.1:{env.port}/shop/caf%C3%A9?q=1"
    assert hit["action_name"] == "/shop/café"
    assert (hit["ua"], hit["lang"], hit["urlref"]) == ("Mozilla/5.0 (test)", "de-CH", "https://ref.example/")
    assert (hit["dimension1"], hit["dimension2"]) == ("200", "GET")
    assert before - 1 <= int(hit["cdt"]) <= time.time() + 1
    assert int(hit["pf_srv"]) < 1000


def test_pf_srv_is_the_whole_request_and_what_a_request_becomes_is_the_same(start_envoy, matomo):
    env = start_envoy(BASE, access_log=True)
    request(env.port, "/slow?delay_ms=300")
    request(env.port, "/status/404")
    request(env.port, "/app.js", headers={"x-demo-response-headers": json.dumps({"content-type": "text/javascript"})})
    hits = {h["action_name"].split("/URL")[0]: h for h in matomo.wait_for_hits(2)}
    assert 300 <= int(hits["/slow"]["pf_srv"]) < 1000, hits["/slow"]["pf_srv"]
    assert hits["404"]["action_name"] == "404/URL = %2Fstatus%2F404/From = "
    assert settled_counters(env)["requests_ignored.asset"] == 1


def test_app_headers_are_read_but_reach_the_client(start_envoy, matomo):
    env = start_envoy(BASE, access_log=True)
    _, seen = response_headers(env.port, "/play", {"x-demo-response-headers": json.dumps(
        {"x-matomo-action-name": "Game / play", "x-matomo-e-c": "game"})})
    assert seen["x-matomo-action-name"] == "Game / play"
    hit = matomo.wait_for_hits(1)[0]
    # An event: the app's name becomes the event's name.
    assert hit["e_n"] == "Game / play" and hit["e_c"] == "game"


def test_rules_and_counters_work_the_same(start_envoy, matomo):
    env = start_envoy({**BASE, "ignored_routes": ["/healthz"]}, access_log=True)
    for path in ("/healthz", "/a", "/healthz?full=1", "/b"):
        request(env.port, path)
    assert sorted(h["action_name"] for h in matomo.wait_for_hits(2)) == ["/a", "/b"]
    time.sleep(0.3)
    counters = env.counters()
    assert counters["requests_seen"] == 4 and counters["requests_ignored.route"] == 2
    assert counters["hits_sent"] == 2


def test_requests_envoy_rejects_before_routing_have_no_path_and_no_hit(start_envoy, matomo):
    env = start_envoy(BASE, access_log=True)
    assert raw(env.port, b"NOT HTTP AT ALL\r\n\r\n") == 400
    request(env.port, "/after")
    time.sleep(0.5)
    assert [h["action_name"] for h in matomo.hits] == ["/after"]


def test_a_bad_config_is_refused_as_an_access_logger_too(start_envoy):
    env = start_envoy({"matomo_url": "http://m/", "id_site": 0}, access_log=True, wait=False)
    assert env.wait_exit(60) != 0, "Envoy must refuse the config"
    lines = [line for line in env.log().splitlines() if "invalid plugin configuration" in line]
    assert len(lines) == 1 and "`id_site`: " in lines[0], lines
