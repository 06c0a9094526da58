"""A hostile client must never hurt the proxy: whatever it sends, the filter's memory and CPU per
request stay bounded, requests keep their status, and what the filter cuts or refuses is counted.

Each attack runs on real Envoy with the shipped defaults (2 workers) and prints its figures.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.support import envoy as E
from tests.support.flood import (HOSTILE_HEADERS, HOSTILE_PATH, README_RULES, flood, get, one,
                                  read_response)
from tests.support.matomo import Behaviour
from tests.support.traffic import TrailerApp, h2c_request, log_lines, settled_counters, wait_counter

# Envoy's own header limit is 60 KiB: a path this long, with a few headers, is what gets through.
LONG_PATH = b"/" * 59_000
DEFAULTS = {"matomo_url": "http://matomo.example/", "id_site": 1}


def closed_port() -> int:
    """A port nothing listens on: Matomo down."""
    return E.free_port()


def vm_trouble(envoy) -> list[str]:
    """Log lines of a VM that failed, ran out of memory or was restarted."""
    # V8's trap reads "Uncaught RuntimeError: unreachable"; "Matomo unreachable" is no VM trouble.
    needles = ("Uncaught", "memory allocation", "RuntimeError: unreachable", "VM is dead")
    return [line for line in envoy.log().splitlines() if "wasm" in line and any(n in line for n in needles)]


# --- 1. memory: 59 KB paths from 8 clients, Matomo down, slow or healthy ------------------------

MEMORY_CASES = {
    # name: (seconds of flood, Matomo behaviour or None for down)
    "down": (60, None),
    "slow": (20, Behaviour(delay=2.0)),
    "healthy": (20, Behaviour()),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_long_paths_from_many_clients_keep_memory_bounded(start_envoy, matomo, case, capsys):
    seconds, behaviour = MEMORY_CASES[case]
    if behaviour is None:
        envoy = start_envoy(DEFAULTS, concurrency=2, matomo_port=closed_port())
    else:
        matomo.behaviour = behaviour
        envoy = start_envoy(DEFAULTS, concurrency=2)
    assert flood(envoy.port, get(b"/warm-up"), clients=2, seconds=1.0).keys() == {200}
    warm = settled_counters(envoy)
    if case == "healthy":
        warm = wait_counter(envoy, "hits_sent", warm["requests_tracked"])
    idle = envoy.rss_bytes()
    peak = idle
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.5):
            peak = max(peak, envoy.rss_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        statuses = flood(envoy.port, get(LONG_PATH, [(b"user-agent", b"attacker")]), clients=8,
                         seconds=seconds)
    finally:
        done.set()
        sampler.join()
    peak = max(peak, envoy.rss_bytes())
    if case == "healthy":
        tracked = settled_counters(envoy)["requests_tracked"]
        c = wait_counter(envoy, "hits_sent", tracked, timeout=30)
    else:
        c = settled_counters(envoy)
    # What the flood did, without the warm-up.
    c = {k: v - warm.get(k, 0) for k, v in c.items()}
    sent = sum(statuses.values())
    rise = (peak - idle) / 2**20
    with capsys.disabled():
        print(f"\n[abuse:{case}] {sent} requests of 59 KB in {seconds} s from 8 clients: statuses "
              f"{dict(statuses)}; RSS idle {idle / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
              f"(+{rise:.1f}); tracked {c.get('requests_tracked', 0)}, truncated "
              f"{c.get('hits_truncated', 0)}, sent {c.get('hits_sent', 0)}, dropped "
              f"{c.get('hits_dropped', 0)}")
    assert set(statuses) == {200}, f"every request answered by the app: {dict(statuses)}"
    assert not vm_trouble(envoy), vm_trouble(envoy)[:5]
    assert envoy.counters("wasm.matomo.").get("vm_reload", 0) == 0
    assert rise <= 50, f"Envoy's RSS rose by {rise:.1f} MiB"
    tracked = c["requests_tracked"]
    # Every such hit is cut to Matomo's limits and counted, the ones then dropped included.
    assert c["hits_truncated"] == sent, (sent, c)
    if case == "healthy":
        assert c["hits_sent"] == tracked and c.get("hits_dropped", 0) == 0, c
    else:
        # The queue filled up in bytes long before 10,000 hits, and what did not fit is counted.
        assert c["hits_dropped"] > 0, c


# --- 2. CPU: 58 KB User-Agents and paths with the documented rules ----------------------------

def cpu_per_request(envoy, request: bytes, n: int) -> float:
    """Envoy's CPU seconds per request over n requests on one keep-alive connection."""
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as sock:
        buffered = b""
        for _ in range(20):  # warm up
            sock.sendall(request)
            _, buffered = read_response(sock, buffered)
        before = envoy.cpu_seconds()
        for _ in range(n):
            sock.sendall(request)
            status, buffered = read_response(sock, buffered)
            assert status == 200
        time.sleep(0.3)  # the filter's tick runs in between; let it settle into the figure
        return (envoy.cpu_seconds() - before) / n


def test_cpu_per_request_stays_bounded_on_58_kb_headers(start_envoy, envoys, matomo, upstream, capsys):
    envoy = start_envoy({**DEFAULTS, **README_RULES}, concurrency=1)
    cfg = E.bootstrap(listen_port=E.free_port(), admin_port=E.free_port(), upstream_port=upstream.port,
                      matomo_port=matomo.port, http_filters=[])
    plain = E.Envoy(cfg).start()
    plain.port = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    envoys.append(plain)
    request = get(HOSTILE_PATH, HOSTILE_HEADERS)
    n = 400
    rounds = []
    for _ in range(3):
        rounds.append(cpu_per_request(envoy, request, n) - cpu_per_request(plain, request, n))
    added = sorted(rounds)[1]
    c = settled_counters(envoy)
    with capsys.disabled():
        print(f"\n[abuse:cpu] 29 KB path + 29 KB User-Agent, example rules + 8 UA patterns: the filter "
              f"adds {added * 1e3:.3f} ms of Envoy CPU per request (rounds: "
              f"{', '.join(f'{r * 1e3:.3f}' for r in rounds)} ms); tracked {c['requests_tracked']}")
    assert c["requests_tracked"] >= 3 * n
    # The target is 0.2 ms; the bound here leaves room for this shared machine's noise
    # while failing on what unbounded rules cost (27 ms with these rules before the caps).
    assert added < 0.5e-3, f"{added * 1e3:.3f} ms per request"


# --- 3. only requests the app answered ------------------------------------------------------

JWKS = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "k", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}


def front_filters() -> list[dict]:
    """RBAC refusing /admin, jwt_authn requiring a token under /private, and a rate limiter
    whose bucket the /limited route configures: each answers some requests itself."""
    return [
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"admin": {
                "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                "principals": [{"any": True}]}}}}},
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"p": {"local_jwks": {"inline_string": json.dumps(JWKS)}}},
            "rules": [{"match": {"prefix": "/private"}, "requires": {"provider_name": "p"}}]}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl"}},
    ]


def routes(upstream_cluster: str = "upstream") -> list[dict]:
    limited = {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
               "stat_prefix": "rl_limited",
               "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "3600s"},
               "filter_enabled": {"default_value": {"numerator": 100}},
               "filter_enforced": {"default_value": {"numerator": 100}}}
    return [
        {"match": {"prefix": "/limited"}, "route": {"cluster": upstream_cluster},
         "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": limited}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
        {"match": {"prefix": "/nowhere"}, "route": {"cluster": "nowhere"}},
        {"match": {"prefix": "/"}, "route": {"cluster": upstream_cluster}},
    ]


@pytest.fixture
def guarded_envoy(matomo, upstream, envoys):
    def start(plugin: dict):
        listen, admin = E.free_port(), E.free_port()
        cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port,
                          matomo_port=matomo.port,
                          http_filters=front_filters() + [E.wasm_filter(plugin)],
                          hcm_extra={"route_config": {"virtual_hosts": [
                              {"name": "all", "domains": ["*"], "routes": routes()}]}})
        cfg["static_resources"]["clusters"].append(E.cluster("nowhere", closed_port()))
        envoy = E.Envoy(cfg).start()
        envoy.port = listen
        envoys.append(envoy)
        return envoy
    return start


def send_guarded_mix(port: int) -> list[int]:
    statuses = []
    for path in ["/page", "/admin/x", "/private/x", "/direct", "/nowhere", "/limited", "/limited",
                 "/limited", "/page2"]:
        statuses.append(one(port, get(path.encode())))
    return statuses


def test_requests_answered_by_envoy_or_a_filter_in_front_are_not_tracked(guarded_envoy, matomo):
    envoy = guarded_envoy({**DEFAULTS, "batch_size": 1, "flush_interval": 0.05})
    statuses = send_guarded_mix(envoy.port)
    assert statuses == [200, 403, 401, 200, 503, 200, 200, 429, 200], statuses
    hits = matomo.wait_for_hits(4)
    c = settled_counters(envoy)
    assert sorted(h["url"].split("/", 3)[3] for h in hits) == ["limited", "limited", "page", "page2"]
    # RBAC's 403, jwt_authn's 401, the direct response, no healthy upstream (503), the rate limit's 429.
    assert c["requests_ignored.local_reply"] == 5, c
    assert c["requests_tracked"] == 4, c


def test_track_local_replies_brings_them_back(guarded_envoy, matomo):
    # Local replies are text/plain GETs, which the default rules read as API reads: count them all.
    envoy = guarded_envoy({**DEFAULTS, "batch_size": 1, "flush_interval": 0.05, "track_local_replies": True,
                           "every_request_a_pageview": True})
    send_guarded_mix(envoy.port)
    hits = matomo.wait_for_hits(9)
    assert len(hits) == 9
    assert settled_counters(envoy).get("requests_ignored.local_reply", 0) == 0


# --- 4. no app tracking header reaches a client, trailers included ---------------------------

def test_app_headers_in_response_trailers_never_reach_the_client(matomo, envoys):
    app = TrailerApp()
    try:
        listen, admin = E.free_port(), E.free_port()
        cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=app.port, matomo_port=matomo.port,
                          http_filters=[E.wasm_filter({**DEFAULTS, "batch_size": 1, "flush_interval": 0.05})],
                          hcm_extra={"http2_protocol_options": {}})
        upstream = cfg["static_resources"]["clusters"][0]
        upstream["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}
        envoy = E.Envoy(cfg).start()
        envoys.append(envoy)
        status, trailers = h2c_request(listen, "/with-trailers")
        assert status == 200
        assert trailers.get("x-app-trailer") == "kept", trailers
        assert not [k for k in trailers if k.startswith("x-matomo-")], trailers
        assert len(matomo.wait_for_hits(1)) == 1
    finally:
        app.stop()


# --- 5. config hygiene, in Envoy ------------------------------------------------------------

def test_a_refused_config_never_echoes_a_pasted_token_nor_a_huge_pattern(start_envoy):
    secret = "0123456789abcdef0123456789abcdef"
    for plugin in ({**DEFAULTS, "token_auth_env": secret},
                   {**DEFAULTS, "matomo_url": f"https://m.example/matomo.php?token_auth={secret}"},
                   {**DEFAULTS, "base_url": secret},
                   {**DEFAULTS, "ignored_patterns": ["(" + "a" * 100_000]}):
        envoy = start_envoy(plugin, wait=False)
        assert envoy.wait_exit(30) != 0
        lines = log_lines(envoy, "invalid plugin configuration")
        assert len(lines) == 1, lines
        assert secret not in envoy.log()
        assert len(lines[0]) < 500, len(lines[0])


def test_cid_header_with_a_token_warns_at_load(start_envoy):
    envoy = start_envoy({**DEFAULTS, "token_auth": "t", "cid_header": "x-visitor"})
    assert log_lines(envoy, "cid_header is set with a token"), envoy.log()[-2000:]


# --- 6. small ones: no URL to track, every cookie header searched ---------------------------

def test_options_star_is_not_tracked(start_envoy, matomo):
    """`OPTIONS *` asks about the server, not a page: it has no URL to track (`no_url`). A request
    without a host is the other such case; Envoy refuses those before the filter sees them (unit
    tests in src/tracker.rs cover them, and base_url giving them one)."""
    envoy = start_envoy({**DEFAULTS, "batch_size": 1, "flush_interval": 0.05})
    status = one(envoy.port, b"OPTIONS * HTTP/1.1\r\nhost: shop.example\r\n\r\n")
    assert one(envoy.port, get(b"/after")) == 200
    assert [h["url"] for h in matomo.wait_for_hits(1)] == ["http://shop.example/after"]
    c = settled_counters(envoy)
    assert c["requests_ignored.no_url"] == 1 and c["requests_tracked"] == 1, (status, c)


def test_every_cookie_header_is_searched_for_the_visitor_id(start_envoy, matomo):
    envoy = start_envoy({**DEFAULTS, "batch_size": 1, "flush_interval": 0.05, "token_auth": "t",
                         "read_visitor_cookie": True})
    request = get(b"/c", [(b"cookie", b"a=1"), (b"cookie", b"_pk_id.1.abcd=0123456789abcdef.1700000000.")])
    assert one(envoy.port, request) == 200
    assert matomo.wait_for_hits(1)[0]["_id"] == "0123456789abcdef"


# --- 7. trust: identity headers a client sends are stripped at the edge ---------------------

def test_the_documented_edge_config_strips_client_sent_identity_headers(matomo, upstream, envoys):
    """docs/deployment.md, "Which request headers the filter trusts": a header_mutation filter before the
    Matomo filter (and before jwt_authn, which then sets the header from a verified claim)
    removes what a client sent under the identity headers' names."""
    strip = {"name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "mutations": {"request_mutations": [{"remove": "x-user"}, {"remove": "x-tenant"}]}}}
    plugin = {**DEFAULTS, "batch_size": 1, "flush_interval": 0.05, "uid_header": "x-user",
              "dimension_headers": {"x-tenant": 1}}
    listen, admin = E.free_port(), E.free_port()
    cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port, matomo_port=matomo.port,
                      http_filters=[strip, E.wasm_filter(plugin)])
    envoy = E.Envoy(cfg).start()
    envoys.append(envoy)
    assert one(listen, get(b"/spoof", [(b"x-user", b"admin"), (b"x-tenant", b"other")])) == 200
    hit = matomo.wait_for_hits(1)[0]
    assert "uid" not in hit and "dimension1" not in hit, hit
