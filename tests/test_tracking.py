"""The hit Matomo receives for real requests through real Envoy, for every config option."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.client import load, raw, request
from tests.support.traffic import wait_counter

MATOMO = {"matomo_url": "http://matomo.test/", "id_site": 3, "flush_interval": 0.1}


def config(**extra):
    return {**MATOMO, **extra}


def one_hit(env, matomo, path="/", **kw):
    status, _ = request(env.port, path, **kw)
    hits = matomo.wait_for_hits(1)
    assert len(hits) == 1, hits
    return status, hits[0]


def test_a_hit_carries_every_field(start_envoy, matomo):
    env = start_envoy(config(status_dimension=1, method_dimension=2))
    before = time.time()
    status, hit = one_hit(env, matomo, "/shop/caf%C3%A9%20x?q=a%26b&empty=&x=%2F", headers={
        "User-Agent": "Mozilla/5.0 (test)", "Accept-Language": "fr-CH, fr;q=0.9, en;q=0.8",
        "Referer": "https://ref.example/page?from=1"})
    assert status == 200
    assert hit["idsite"] == "3"
    assert hit["rec"] == "1" and hit["apiv"] == "1"
    assert hit["rand"].isdigit()
    assert hit["url"] == f"http://127.0.0.1:{env.port}/shop/caf%C3%A9%20x?q=a%26b&empty=&x=%2F"
    assert hit["action_name"] == "/shop/café x"
    assert hit["ua"] == "Mozilla/5.0 (test)"
    assert hit["lang"] == "fr-CH, fr;q=0.9, en;q=0.8"
    assert hit["urlref"] == "https://ref.example/page?from=1"
    assert (hit["dimension1"], hit["dimension2"]) == ("200", "GET")
    assert "cvar" not in hit, "a default Matomo 4+ has no custom variables"
    assert len(hit["cid"]) == 16, "without a token, a daily visitor id of its own"
    assert before - 1 <= int(hit["cdt"]) <= time.time() + 1
    assert int(hit["pf_srv"]) < 1000
    assert "cip" not in hit and "token_auth" not in hit
    assert matomo.calls[0].path == "/matomo.php"
    assert matomo.calls[0].headers["host"] == "matomo.test"
    assert matomo.calls[0].headers["content-type"] == "application/json"
    assert "token_auth" not in matomo.calls[0].json()
    assert "user-agent" not in matomo.calls[0].headers, "Matomo would give it to hits without ua"


def test_pf_srv_is_milliseconds_to_the_response_headers(start_envoy, matomo):
    env = start_envoy(config())
    _, hit = one_hit(env, matomo, "/slow?delay_ms=300")
    assert 300 <= int(hit["pf_srv"]) < 1000, hit["pf_srv"]


@pytest.mark.parametrize("code", [404, 500])
def test_error_pages_are_tracked_under_their_status(start_envoy, matomo, code):
    env = start_envoy(config(status_dimension=1, method_dimension=2, status_and_method_custom_variables=True))
    status, hit = one_hit(env, matomo, f"/status/{code}?x=1", method="POST", body=b"x",
                          headers={"Referer": "https://shop.example/list"})
    assert status == code
    assert hit["action_name"] == f"{code}/URL = %2Fstatus%2F{code}%3Fx%3D1/From = https%3A%2F%2Fshop.example%2Flist"
    assert (hit["dimension1"], hit["dimension2"]) == (str(code), "POST")
    assert json.loads(hit["cvar"]) == {"1": ["http_status_code", str(code)], "2": ["http_method", "POST"]}


def test_missing_headers_are_left_out(start_envoy, matomo):
    env = start_envoy(config())
    raw(env.port, b"GET /bare HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    hit = matomo.wait_for_hits(1)[0]
    for key in ("ua", "lang", "urlref"):
        assert key not in hit
    assert hit["url"] == "http://h/bare"


def test_token_goes_in_the_body_only_with_the_client_address(start_envoy, matomo):
    env = start_envoy(config(token_auth="s3cret-T0KEN"))
    one_hit(env, matomo, "/t")
    call = matomo.calls[0]
    assert call.json()["token_auth"] == "s3cret-T0KEN"
    assert "s3cret" not in call.path and "token_auth" not in call.path
    assert "token_auth" not in call.hits[0]
    assert call.hits[0]["cip"] == "127.0.0.1"
    assert "s3cret" not in env.log()


def test_access_token_alias(start_envoy, matomo):
    env = start_envoy({"matomo_url": "http://m", "idsite": "8", "access_token": "tok", "flush_interval": 0.1})
    _, hit = one_hit(env, matomo)
    assert hit["idsite"] == "8" and hit["cip"] == "127.0.0.1"
    assert matomo.calls[0].json()["token_auth"] == "tok"


def test_the_token_can_come_from_the_vm_environment(start_envoy, matomo):
    env = start_envoy(config(token_auth_env="MATOMO_TOKEN_AUTH"), vm_env={"MATOMO_TOKEN_AUTH": "env-tok"})
    one_hit(env, matomo)
    assert matomo.calls[0].json()["token_auth"] == "env-tok"


def test_a_spoofed_x_forwarded_for_does_not_win_where_envoy_does_not_trust_it(start_envoy, matomo):
    env = start_envoy(config(token_auth="t"), hcm_extra={"use_remote_address": True})
    _, hit = one_hit(env, matomo, headers={"X-Forwarded-For": "198.51.100.7"})
    assert hit["cip"] == "127.0.0.1"


def test_a_trusted_hop_gives_the_forwarded_client_address(start_envoy, matomo):
    env = start_envoy(config(token_auth="t"),
                      hcm_extra={"use_remote_address": True, "xff_num_trusted_hops": 1})
    _, hit = one_hit(env, matomo, headers={"X-Forwarded-For": "198.51.100.7"})
    assert hit["cip"] == "198.51.100.7"


def test_tracker_path_and_authority_come_from_matomo_url(start_envoy, matomo):
    env = start_envoy(config(matomo_url="https://stats.example:8443/sub/"))
    one_hit(env, matomo)
    assert matomo.calls[0].path == "/sub/matomo.php"
    assert matomo.calls[0].headers["host"] == "stats.example:8443"


def test_matomo_cluster_names_the_envoy_cluster(start_envoy, matomo):
    env = start_envoy(config(matomo_cluster="outbound|443||matomo.example.com"),
                      matomo_cluster="outbound|443||matomo.example.com")
    one_hit(env, matomo)


def test_base_url_and_assume_https(start_envoy, matomo):
    env = start_envoy(config(base_url="http://www.example.com/app/", assume_https=True))
    _, hit = one_hit(env, matomo, "/p?x=1")
    assert hit["url"] == "https://www.example.com/app/p?x=1"


def test_assume_https_alone(start_envoy, matomo):
    env = start_envoy(config(assume_https=True))
    _, hit = one_hit(env, matomo, "/p")
    assert hit["url"] == f"https://127.0.0.1:{env.port}/p"


def test_routes_details_under_both_names(start_envoy, matomo):
    for key in ("routes_details", "route_details"):
        matomo.calls.clear()
        env = start_envoy(config(**{key: {"/users": {"action_name": "Users", "e_c": "api", "e_a": "listing",
                                                      "cvar": {"team": "web"}}}}))
        request(env.port, "/users?page=2")
        request(env.port, "/users/1")
        hits = {h["url"].rsplit("/", 1)[1]: h for h in matomo.wait_for_hits(2)}
        listing, user = hits["users?page=2"], hits["1"]
        assert listing["action_name"] == "Users" and listing["e_a"] == "listing" and listing["e_c"] == "api"
        assert json.loads(listing["cvar"])["1"] == ["team", "web"]
        assert user["action_name"] == "/users/1" and "e_a" not in user
        env.stop()


def paths_tracked(env, matomo, requests, expected):
    for method, path, headers in requests:
        assert request(env.port, path, method=method, headers=headers)[0] in (200, 204)
    matomo.wait_for_hits(len(expected))
    time.sleep(0.4)  # anything ignored would have arrived by now too
    assert sorted(h["url"].split(str(env.port), 1)[1] for h in matomo.hits) == sorted(expected)


@pytest.mark.parametrize("routes_key,patterns_key", [("ignored_routes", "ignored_patterns"),
                                                     ("exclude_paths", "exclude_patterns")])
def test_ignored_routes_and_patterns(start_envoy, matomo, routes_key, patterns_key):
    env = start_envoy(config(**{routes_key: ["/health"], patterns_key: [".*/old.*", "/fo", "fo"]}))
    paths_tracked(env, matomo, [
        ("GET", "/health", {}), ("GET", "/health?x=1", {}), ("GET", "/health/deep", {}),
        ("GET", "/some/old/path", {}), ("GET", "/foo/bar", {}), ("GET", "/bar/fo", {}),
    ], ["/health/deep", "/bar/fo"])
    time.sleep(0.2)
    c = env.counters()
    assert c["requests_seen"] == 6 and c["requests_tracked"] == 2
    assert c["requests_ignored.route"] == 2 and c["requests_ignored.pattern"] == 2


def test_ignored_ua_patterns(start_envoy, matomo):
    env = start_envoy(config(ignored_ua_patterns=[".*bot.*", "curl"]))
    paths_tracked(env, matomo, [
        ("GET", "/a", {"User-Agent": "Googlebot/2.1"}), ("GET", "/b", {"User-Agent": "curl/8"}),
        ("GET", "/c", {"User-Agent": "my curl"}), ("GET", "/d", {"User-Agent": "Mozilla"}),
    ], ["/c", "/d"])


def test_allowed_and_ignored_methods(start_envoy, matomo):
    env = start_envoy(config(allowed_methods=["get", "POST", "options"], ignored_methods=["OPTIONS"]))
    paths_tracked(env, matomo, [
        ("GET", "/g", {}), ("POST", "/p", {}), ("DELETE", "/d", {}), ("OPTIONS", "/o", {}),
    ], ["/g", "/p"])


def test_full_batches_go_at_once_and_partial_ones_after_flush_interval(start_envoy, matomo):
    env = start_envoy(config(batch_size=2, flush_interval=1.5))
    for i in range(5):
        request(env.port, f"/b{i}")
    matomo.wait_for_hits(4, timeout=1.0)
    assert [len(c.hits) for c in matomo.calls] == [2, 2], "full batches first"
    matomo.wait_for_hits(5, timeout=3.0)
    assert [len(c.hits) for c in matomo.calls] == [2, 2, 1]


def test_non_utf8_header_bytes_neither_break_requests_nor_tracking(start_envoy, matomo):
    env = start_envoy(config())
    status = raw(env.port, b"GET /bytes HTTP/1.1\r\nHost: h\r\nUser-Agent: \xff\xfe\r\n"
                           b"Accept-Language: \xc3\x28\r\nReferer: http://r/\x80\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert request(env.port, "/after", headers={"User-Agent": "ok"})[0] == 200
    hits = sorted(matomo.wait_for_hits(2), key=lambda h: h["url"])
    assert hits[1]["url"].endswith("/bytes") and hits[1]["ua"] == "\ufffd\ufffd"
    assert hits[0]["url"].endswith("/after") and hits[0]["ua"] == "ok"


def test_matomo_down_changes_no_status_or_latency(start_envoy, matomo, upstream):
    from tests.support.envoy import free_port
    env = start_envoy(config(), matomo_port=free_port())  # nothing listens there
    for i in range(20):
        status, took = request(env.port, f"/down{i}")
        assert status == 200 and took < 0.5
    time.sleep(0.5)
    c = env.counters()
    assert c["requests_tracked"] == 20 and c["batches_failed"] >= 1 and c["hits_sent"] == 0


def test_slow_matomo_changes_no_status_or_latency_and_times_out(start_envoy, matomo):
    matomo.behaviour.delay = 2.0
    env = start_envoy(config(http_timeout=0.3))
    for i in range(10):
        status, took = request(env.port, f"/slow{i}")
        assert status == 200 and took < 0.5
    assert wait_counter(env, "batches_failed", 1)["batches_failed"] >= 1
    matomo.behaviour.delay = 0
    hits = matomo.wait_for_hits(20, timeout=5)  # each batch arrived once per attempt
    assert {h["url"].rsplit("/", 1)[1] for h in hits} == {f"slow{i}" for i in range(10)}


def test_load_every_hit_exactly_once_over_two_workers(start_envoy, matomo):
    env = start_envoy(config(), concurrency=2)
    total = 1000
    start = time.monotonic()
    errors = load(env.port, total, clients=8)
    took = time.monotonic() - start
    hits = matomo.wait_for_hits(total, timeout=10)
    time.sleep(0.5)
    hits = matomo.hits
    paths = [h["url"].split(str(env.port), 1)[1] for h in hits]
    assert not errors
    assert len(paths) == total and set(paths) == {f"/load/{i:04d}" for i in range(total)}
    time.sleep(0.3)
    c = env.counters()
    assert c["hits_sent"] == total and c["batches_sent"] == len(matomo.calls)
    print(f"\nload: {total} requests in {took:.2f}s over 2 workers, {len(hits)} hits received "
          f"in {len(matomo.calls)} calls to Matomo ({1000 * len(matomo.calls) / total:.1f} per 1000 hits)")


def test_a_request_over_tls_is_tracked_as_https(start_envoy, matomo, tmp_path):
    import http.client
    import ssl
    import subprocess
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    tls = {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": str(tmp_path / "cert.pem")},
            "private_key": {"filename": str(tmp_path / "key.pem")}}]}}}}
    env = start_envoy(config(), filter_chain_extra=tls)
    conn = http.client.HTTPSConnection("127.0.0.1", env.port, timeout=10,
                                       context=ssl._create_unverified_context())
    conn.request("GET", "/secure?x=1", headers={"Host": "shop.example"})
    assert conn.getresponse().status == 200
    conn.close()
    hit = matomo.wait_for_hits(1)[0]
    assert hit["url"] == "https://shop.example/secure?x=1"
