"""One gateway, many Matomo sites: one filter config (`sites`) sends each host's requests to its
own site in a real Matomo, checks each site at start, and leaves unknown hosts untracked, or
sends them to the top-level site when there is one."""

from __future__ import annotations

from tests.support.client import request
from tests.support.real_matomo import wait_for_counters
from tests.support.traffic import log_lines, settled_counters

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
HOSTS = ["shop.example.com", "docs.example.com", "api.example.com"]


def three_sites(matomo, request_) -> dict[str, int]:
    return {host: matomo.add_site(f"{host} {request_.node.name}", [f"https://{host}"]) for host in HOSTS}


def visit_paths(matomo, idsite: int) -> list[str]:
    """The paths of the site's actions (the url is the request's: scheme, host and port, path)."""
    return sorted("/" + a["url"].split("/", 3)[3] for v in matomo.visits(idsite) for a in v["actionDetails"])


def test_each_host_lands_in_its_own_site_and_an_unknown_host_nowhere(start_envoy, real_matomo, request):
    ids = three_sites(real_matomo, request)
    plugin = {"matomo_url": real_matomo.url, "token_auth": real_matomo.token, "flush_interval": 0.2,
              "sites": [{"hosts": ["shop.example.com", "www.shop.example.com"], "id_site": ids["shop.example.com"]},
                        {"hosts": ["*.docs.example.com", "docs.example.com"], "id_site": ids["docs.example.com"]},
                        {"hosts": ["api.example.com"], "id_site": ids["api.example.com"],
                         "api_requests_as": "pageview"}]}
    env = start_envoy(plugin, concurrency=2, **real_matomo.envoy_options())
    sent = {"shop.example.com": ["/", "/cart"], "www.shop.example.com:443": ["/deals"],
            "docs.example.com": ["/guide"], "v2.docs.example.com": ["/v2/guide"],
            "api.example.com": ["/v1/orders"], "elsewhere.org": ["/nobody"]}
    for host, paths in sent.items():
        for path in paths:
            status, _ = request_through(env, host, path)
            assert status == 200
    counters = wait_for_counters(env, hits_sent=6)
    assert counters["requests_ignored.no_site"] == 1 and counters.get("hits_dropped", 0) == 0, counters
    assert visit_paths(real_matomo, ids["shop.example.com"]) == ["/", "/cart", "/deals"]
    assert visit_paths(real_matomo, ids["docs.example.com"]) == ["/guide", "/v2/guide"]
    assert visit_paths(real_matomo, ids["api.example.com"]) == ["/v1/orders"]
    # One start-up check for the one token, naming every site, in one line.
    named = ", ".join(str(i) for i in sorted(ids.values()))
    assert log_lines(env, f"Matomo: sites {named} exist and the token may track them"), env.log()[-3000:]
    print(f"\n[sites] visits per site: " + ", ".join(
        f"{host} (site {i}): {len(real_matomo.visits(i))}" for host, i in ids.items()))


def test_unknown_hosts_go_to_the_top_level_site_when_there_is_one(start_envoy, real_matomo, request):
    ids = three_sites(real_matomo, request)
    fallback = real_matomo.add_site(f"fallback {request.node.name}", ["https://elsewhere.org"])
    plugin = {"matomo_url": real_matomo.url, "flush_interval": 0.2, "id_site": fallback,
              "sites": [{"hosts": ["shop.example.com"], "id_site": ids["shop.example.com"]}]}
    env = start_envoy(plugin, **real_matomo.envoy_options())
    request_through(env, "shop.example.com", "/")
    request_through(env, "elsewhere.org", "/lost")
    wait_for_counters(env, hits_sent=2)
    assert visit_paths(real_matomo, fallback) == ["/lost"]
    assert len(real_matomo.visits(ids["shop.example.com"])) == 1
    assert settled_counters(env).get("requests_ignored.no_site", 0) == 0


def test_a_site_with_its_own_token_has_its_own_calls_and_check(start_envoy, real_matomo, request):
    """A Matomo user who owns only some sites gives them their own token (here: a wrong one for
    docs): the shop's hits go with the good token, the docs' token is refused at its start-up
    check and its hits are dropped, counted, never sent."""
    ids = three_sites(real_matomo, request)
    if real_matomo.local:
        real_matomo.sql("DELETE FROM matomo_brute_force_log WHERE ip_address = '127.0.0.1'")
    plugin = {"matomo_url": real_matomo.url, "token_auth": real_matomo.token, "flush_interval": 0.2,
              "sites": [{"hosts": ["shop.example.com"], "id_site": ids["shop.example.com"]},
                        {"hosts": ["docs.example.com"], "id_site": ids["docs.example.com"],
                         "token_auth": "not-the-docs-token-0123456789abcdef"}]}
    env = start_envoy(plugin, **real_matomo.envoy_options())
    request_through(env, "shop.example.com", "/")
    request_through(env, "docs.example.com", "/guide")
    counters = wait_for_counters(env, hits_sent=1, **{"hits_dropped.refused": 1})
    assert counters["batches_sent"] == 1, counters
    assert log_lines(env, f"site {ids['docs.example.com']}: Matomo refused the token")
    assert log_lines(env, f"Matomo: site {ids['shop.example.com']} exists")
    assert len(real_matomo.visits(ids["shop.example.com"])) == 1
    assert real_matomo.visits(ids["docs.example.com"]) == []
    if real_matomo.local:
        real_matomo.sql("DELETE FROM matomo_brute_force_log WHERE ip_address = '127.0.0.1'")


def request_through(env, host: str, path: str):
    return request(env.port, path, headers={"Host": host, "User-Agent": BROWSER})
