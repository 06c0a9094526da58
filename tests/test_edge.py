"""Nothing lost at Matomo's edge: bodies too large for Matomo's web server, a site or token that
cannot track, several tracker servers with one going away, and calls that time out after Matomo
stored them.

The first tests use the recording stand-in (tests/support/matomo.py), which can refuse bodies over
a size as a web server does (413); the others a real Matomo (tests/support/real_matomo.py), with
more tracker servers over the same database when needed (tests/support/tracker_servers.py). Each
counts what Matomo got against what was sent, and reads the filter's counters and log.
"""

from __future__ import annotations

import collections
import http.client
import threading
import time
import urllib.parse

import pytest

from tests.support import envoy as E
from tests.support import shipped
from tests.support.client import at_once
from tests.support.matomo import Behaviour, MatomoStandIn
from tests.support.real_matomo import wait_for_counters
from tests.support.tracker_servers import LateAnswers, PhpFrontEnd
from tests.support.traffic import log_lines, settled_counters, timed_get, wait_until
from tests.test_real_matomo import HOST, LANGUAGES, get, new_site, start_tracking, stored_paths
from tests.test_xds import TOKEN as XDS_TOKEN
from tests.test_xds import XdsEnvoy

STAND_IN = {"matomo_url": "http://matomo.example/", "id_site": 1}
# A 48 KB query string, as in the issue (Envoy lets 60 KB of headers through): the filter keeps 1024 bytes of
# the url, so such a hit weighs 1.3 KB in a bulk body against 0.35 KB for an ordinary one.
LONG_QUERY = "q=" + "x" * 48_000


def path_of(hit: dict) -> str:
    return urllib.parse.urlsplit(hit["url"]).path


def mixed_flood(port: int, clients: int, rounds: int) -> tuple[list[str], list[str]]:
    """Each client, with its own User-Agent and keep-alive connection, sends `rounds` ordinary
    requests and as many with a 48 KB query string, alternating, all at once; returns the paths
    of the ordinary ones and of the long ones."""
    ordinary, long, failed = [], [], []
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Host": HOST, "User-Agent": f"Mozilla/5.0 (X11; Linux x86_64) edge-client/{k}"}
        for i in range(rounds):
            for kind, query in (("ordinary", ""), ("long", "?" + LONG_QUERY)):
                path = f"/{kind}/{k}/{i}"
                conn.request("GET", path + query, headers=headers)
                response = conn.getresponse()
                response.read()
                with lock:
                    (ordinary if kind == "ordinary" else long).append(path)
                    if response.status != 200:
                        failed.append((path, response.status))
        conn.close()

    at_once(clients, client)
    assert not failed and len(ordinary) == len(long) == clients * rounds, failed[:5]
    return ordinary, long


# ---- bodies Matomo's web server accepts --------------------------------------------------------


@pytest.mark.parametrize("max_batch_bytes", [None, 64 * 1024], ids=["default-512KiB-split-on-413", "64KiB"])
def test_long_urls_behind_a_body_limit_every_hit_arrives_exactly_once(start_envoy, matomo, max_batch_bytes, capsys):
    """A web server refusing bodies over 70 KB (nginx `client_max_body_size 70k`). With the
    default max_batch_bytes (512 KiB) a batch of 200 hits, half of them long, weighs about
    165 KB: the server answers 413, and the filter sends the batch again in halves until each
    half passes. With max_batch_bytes below the limit no body is ever refused."""
    matomo.behaviour = Behaviour(max_body_bytes=70_000)
    # Batches close when full (200 hits) or after 3 s: large ones, even on a slow machine.
    plugin = {**STAND_IN, "flush_interval": 3}
    if max_batch_bytes:
        plugin["max_batch_bytes"] = max_batch_bytes
    envoy = start_envoy(plugin, concurrency=2)
    ordinary, long = mixed_flood(envoy.port, clients=8, rounds=50)
    total = len(ordinary) + len(long)
    c = wait_for_counters(envoy, hits_sent=total, timeout=60)
    delivered = collections.Counter(path_of(h) for h in matomo.hits)
    assert delivered == collections.Counter(ordinary + long), "every hit, ordinary or long, exactly once"
    assert c["hits_dropped"] == 0 and c["requests_tracked"] == total, c
    largest = max(len(call.body) for call in matomo.calls)
    if max_batch_bytes:
        assert matomo.refused == [] and c["batches_split"] == 0, (matomo.refused, c)
        assert largest <= max_batch_bytes
    else:
        assert matomo.refused and c["batches_split"] == len(matomo.refused), (matomo.refused, c)
        lines = log_lines(envoy, "Matomo's web server answered 413 (body too large); sending the")
        assert lines and "hits again in two halves" in lines[0], envoy.log()[-3000:]
    with capsys.disabled():
        print(f"\n[413] max_batch_bytes {max_batch_bytes or 'default'}: {total} requests ({len(long)} with 48 KB "
              f"queries), {len(delivered)} hits at Matomo once each, {len(matomo.refused)} bodies refused "
              f"(largest {max(matomo.refused, default=0)} B), largest accepted {largest} B, "
              f"batches_sent {c['batches_sent']}, batches_split {c['batches_split']}, hits_dropped {c['hits_dropped']}")


def test_a_hit_too_large_even_alone_is_dropped_counted_and_logged_and_no_other_is_lost(start_envoy, matomo, capsys):
    """A server whose limit (1,200 bytes) a long hit exceeds even alone: batches split down to
    that single hit, which is dropped as refused; every ordinary hit arrives once."""
    matomo.behaviour = Behaviour(max_body_bytes=1_200)
    envoy = start_envoy({**STAND_IN, "flush_interval": 0.5})
    ordinary, long = mixed_flood(envoy.port, clients=4, rounds=25)
    c = wait_for_counters(envoy, **{"hits_dropped.refused": len(long), "hits_sent": len(ordinary)}, timeout=60)
    delivered = collections.Counter(path_of(h) for h in matomo.hits)
    assert delivered == collections.Counter(ordinary), "each ordinary hit once, no long one"
    assert c["hits_dropped"] == c["hits_dropped.refused"] == len(long), c
    assert c["hits_sent"] == len(ordinary), c
    # One line about Matomo trouble per 10 s: the first, about a split, holds back the drops.
    lines = log_lines(envoy, "Matomo's web server answered 413 (body too large)")
    assert lines, envoy.log()[-3000:]
    with capsys.disabled():
        print(f"\n[413 alone] {len(ordinary) + len(long)} requests: {len(delivered)} ordinary hits at Matomo once "
              f"each, {c['hits_dropped.refused']} long ones dropped as refused, {len(matomo.refused)} bodies "
              f"refused, batches_split {c['batches_split']}; log: {lines[0].split('wasm log')[-1].strip()}")


# ---- misconfiguration that shouts --------------------------------------------------------------


def test_the_check_runs_once_at_start_and_again_on_each_config_change(tmp_path, matomo, upstream, envoys):
    """The shipped xDS files with a token: one API call at start, one more when a new plugin
    configuration arrives through LDS, each answered by one line; the token in the body of a
    POST, never in the URL."""
    xds = XdsEnvoy(tmp_path, matomo, upstream, envoys)
    assert wait_until(lambda: log_lines(xds.envoy, "Matomo: site 1 exists and the token may track it"))
    xds.update(id_site=7)
    assert wait_until(lambda: log_lines(xds.envoy, "Matomo: site 7 exists and the token may track it"))
    time.sleep(0.5)
    checked = [urllib.parse.parse_qs(urllib.parse.parse_qs(call.body.decode())["urls[3]"][0])["idSite"]
               for call in matomo.api_calls]
    assert checked == [["1"], ["7"]]
    for call in matomo.api_calls:
        assert call.method == "POST" and call.path == "/index.php"
        assert urllib.parse.parse_qs(call.body.decode())["token_auth"] == [XDS_TOKEN]


def test_a_token_that_may_track_the_site_is_checked_at_start_with_one_line(start_envoy, real_matomo, request):
    site = new_site(real_matomo, request)
    env = start_tracking(start_envoy, real_matomo, site, token_auth=real_matomo.token)
    ok = f"Matomo: site {site} exists and the token may track it"
    assert wait_until(lambda: log_lines(env, ok), timeout=20), env.log()[-3000:]
    get(env, "/checked")
    c = wait_for_counters(env, hits_sent=1)
    assert c["hits_dropped"] == 0 and c["hits_invalid"] == 0
    assert not [line for line in env.log().splitlines() if "][error][wasm]" in line or "][warning][wasm]" in line]


def test_a_token_without_write_access_is_named_at_start_and_its_hits_dropped_as_invalid(start_envoy, real_matomo,
                                                                                         request, capsys):
    """A token of a user who may only view the site: the start-up check says so and how to fix
    it; Matomo then finds every hit of a batch invalid (a hit with `cip` needs a token that may
    write), which the filter logs as an error and counts under hits_dropped.invalid."""
    site = new_site(real_matomo, request)
    login, password = f"viewer{site}", f"Viewer-passw0rd-{site}"
    real_matomo.api("UsersManager.addUser", userLogin=login, password=password, email=f"{login}@example.com")
    real_matomo.api("UsersManager.setUserAccess", userLogin=login, access="view", idSites=site)
    token = real_matomo.api("UsersManager.createAppSpecificTokenAuth", userLogin=login,
                            passwordConfirmation=password, description="view only")["value"]
    env = start_tracking(start_envoy, real_matomo, site, token_auth=token, batch_size=3)
    wrong = f"Matomo: the token has no write access to site {site}, so Matomo refuses its hits"
    assert wait_until(lambda: log_lines(env, wrong), timeout=20), env.log()[-3000:]
    for i in range(3):
        get(env, f"/viewer/{i}")
    c = wait_for_counters(env, **{"hits_dropped.invalid": 3})
    assert c["hits_dropped"] == 3 and c["hits_sent"] == 0 and c["hits_invalid"] == 0, c
    [invalid] = log_lines(env, "Matomo found all 3 hits of a batch invalid")
    assert "][error][wasm]" in invalid
    assert real_matomo.visits(site) == []
    with capsys.disabled():
        print(f"\n[view-only token] 3 requests, 0 in Matomo; log: {log_lines(env, wrong)[0].split('wasm log')[-1]}"
              f" | {invalid.split('wasm log')[-1]}")


def test_matomo_unreachable_at_start_is_checked_again_and_never_blocks_traffic(start_envoy, local_matomo,
                                                                               front_ends, request, capsys):
    """Envoy starts while nothing answers on Matomo's port: the check logs a warning and is tried
    again 30 s later, requests are answered as usual meanwhile, and once a tracker server comes
    up there the check says ok and every hit arrives."""
    matomo = local_matomo
    site = new_site(matomo, request)
    port = E.free_port()
    env = start_envoy({"matomo_url": matomo.url, "id_site": site, "flush_interval": 0.2, "token_auth": matomo.token},
                      matomo_port=port)
    unreachable = f"could not check site {site} and token with Matomo"
    assert wait_until(lambda: log_lines(env, unreachable), timeout=20), env.log()[-3000:]
    started = time.monotonic()
    slowest = 0.0
    for i in range(20):
        asked = time.monotonic()
        get(env, f"/early/{i:02d}")
        slowest = max(slowest, time.monotonic() - asked)
    assert slowest < 0.5, f"a request took {slowest:.3f} s while Matomo was unreachable"
    wait_for_counters(env, batches_failed=2)
    front_ends(port)
    ok = f"Matomo: site {site} exists and the token may track it"
    assert wait_until(lambda: log_lines(env, ok), timeout=45), env.log()[-3000:]
    c = wait_for_counters(env, hits_sent=20, timeout=30)
    assert sorted(stored_paths(matomo, site)) == [f"/early/{i:02d}" for i in range(20)]
    assert c["hits_dropped"] == 0 and c["batches_failed"] >= 2, c
    with capsys.disabled():
        print(f"\n[unreachable at start] 20 requests (slowest {slowest * 1000:.0f} ms), ok line "
              f"{time.monotonic() - started:.0f} s later, 20 in Matomo once, batches_failed {c['batches_failed']}; "
              f"log: {log_lines(env, unreachable)[0].split('wasm log')[-1]} | "
              f"{log_lines(env, 'Matomo unreachable')[0].split('wasm log')[-1]}")


# ---- several tracker servers -------------------------------------------------------------------


def tracker_servers(envoy, field: str) -> dict[int, str]:
    """One field (rq_total, health_flags, …) of each tracker server of the matomo cluster, by
    port, as admin /clusters shows them."""
    out = {}
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "matomo" and parts[2] == field:
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def test_the_filters_retries_are_the_only_retries_and_a_failing_server_is_ejected(start_envoy, matomo, capsys):
    """The shipped cluster (envoy/envoy.yaml) over two stand-ins, one answering every call 503.
    Each attempt of the filter is exactly one call (Envoy adds no retry of its own), the failing
    server is ejected by outlier detection after consecutive_5xx calls, and the filter's retries
    deliver every hit once through the other."""
    failing = MatomoStandIn().start()
    failing.behaviour = Behaviour(status=503, body=b"maintenance")
    try:
        cluster = shipped.matomo_cluster([matomo.port, failing.port])
        # Without the health checks here: on a busy machine a check that times out takes servers
        # out, and with none left Envoy spreads calls over all of them, the ejected one too.
        del cluster["health_checks"]
        # One call in flight at a time, so that none is on its way to the failing server when the
        # third 503 takes it out.
        envoy = start_envoy({**STAND_IN, "batch_size": 5, "flush_interval": 0.1, "concurrent_calls": 1},
                            matomo_cluster_config=cluster)
        for i in range(60):
            assert timed_get(envoy.port, f"/rr/{i}")[0] == 200
        c = wait_for_counters(envoy, hits_sent=60, timeout=30)
        time.sleep(0.5)
        c = settled_counters(envoy)
        stats = envoy.counters("cluster.matomo.")
        assert sorted(path_of(h) for h in matomo.hits) == sorted(f"/rr/{i}" for i in range(60))
        assert len(matomo.calls) + len(failing.calls) == c["batches_sent"], "one call per attempt of the filter"
        assert len(failing.calls) == c["batches_failed"] == cluster["outlier_detection"]["consecutive_5xx"], c
        assert stats["upstream_rq_retry"] == 0 and stats["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
        with capsys.disabled():
            print(f"\n[retries] 60 requests: {c['batches_sent']} calls = {len(matomo.calls)} accepted + "
                  f"{len(failing.calls)} answered 503, {c['hits_retried']} hits retried by the filter, Envoy's "
                  f"upstream_rq_retry {stats['upstream_rq_retry']}, ejections "
                  f"{stats['outlier_detection.ejections_enforced_total']}")
    finally:
        failing.stop()


@pytest.fixture
def front_ends(local_matomo, tmp_path):
    """`front_ends(port=None)`: another `php -S` over the local Matomo's tree and database,
    stopped after the test."""
    started: list[PhpFrontEnd] = []

    def start(port: int | None = None) -> PhpFrontEnd:
        front = PhpFrontEnd(local_matomo.local.env["MATOMO_DIR"], port or E.free_port(), tmp_path / "php-s.log")
        started.append(front)
        return front.start()

    yield start
    for front in started:
        front.stop()


def steady_load(env, seconds: float, clients: int, during=None) -> list[str]:
    """`clients` browsers (each its own language, so Matomo makes each its own visitor) sending
    GETs for `seconds`; `during()` runs in between. Returns the paths sent, in order."""
    sent: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def browser(k: int) -> None:
        i = 0
        while not stop.is_set():
            path = f"/steady/{k}/{i:04d}"
            get(env, path, accept_language=LANGUAGES[k])
            with lock:
                sent.append(path)
            i += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=browser, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        if during:
            during()
        time.sleep(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return sent


def duplicates(paths: list[str]) -> int:
    return len(paths) - len(set(paths))


def test_two_tracker_servers_one_stopped_under_load_every_hit_recorded(start_envoy, local_matomo, front_ends,
                                                                        request, capsys):
    """Matomo grown to two tracker servers over one database: the local php -S and a second one
    over the same tree, in the shipped cluster (health checks, outlier detection). Both take
    calls; the second is stopped while requests flow. Calls in flight to it fail (Matomo's bulk
    calls are one transaction, so a call cut off records nothing), the filter retries them,
    Envoy takes the server out, and every request is in Matomo, none twice unless a call timed
    out (hits_resent_after_timeout)."""
    matomo = local_matomo
    site = new_site(matomo, request)
    second = front_ends()
    cluster = shipped.matomo_cluster([matomo.tracker[1], second.port])
    env = start_tracking(start_envoy, matomo, site, concurrency=2, envoy={"matomo_cluster_config": cluster},
                         batch_size=20)
    served = {}

    def stop_the_second():
        time.sleep(3)
        calls = tracker_servers(env, "rq_total")
        served.update(first=int(calls[matomo.tracker[1]]), second=int(calls[second.port]))
        second.stop()

    sent = steady_load(env, 4, clients=4, during=stop_the_second)
    assert served["first"] > 0 and served["second"] > 0, f"both tracker servers took calls: {served}"
    c = wait_for_counters(env, hits_sent=len(sent), timeout=60)
    stats = env.counters("cluster.matomo.")
    paths = stored_paths(matomo, site)
    assert set(paths) == set(sent), f"missing: {sorted(set(sent) - set(paths))[:10]}"
    assert duplicates(paths) <= c["hits_resent_after_timeout"], (duplicates(paths), c)
    assert c["hits_dropped"] == 0 and c["hits_invalid"] == 0, c
    assert stats["health_check.failure"] + stats["outlier_detection.ejections_enforced_total"] >= 1, stats
    with capsys.disabled():
        print(f"\n[two servers] {len(sent)} requests, {len(paths)} actions in Matomo, {duplicates(paths)} "
              f"duplicates; calls before the stop: {served}; batches_failed {c['batches_failed']}, hits_retried "
              f"{c['hits_retried']}, hits_resent_after_timeout {c['hits_resent_after_timeout']}; health_check.failure "
              f"{stats['health_check.failure']}, ejections {stats['outlier_detection.ejections_enforced_total']}")


def test_a_call_that_times_out_after_matomo_stored_it_is_resent_and_counted(start_envoy, local_matomo, request,
                                                                             capsys):
    """A proxy in front of the real Matomo holds back the answer to the first three bulk calls
    for longer than http_timeout (2 s), after Matomo has stored them. The filter resends each
    batch; Matomo records its hits twice. Nothing is missing, and the duplicates are what
    hits_resent_after_timeout counts, at most."""
    matomo = local_matomo
    site = new_site(matomo, request)
    late = LateAnswers(matomo.tracker, late=3, delay=4)
    try:
        env = start_envoy({"matomo_url": matomo.url, "id_site": site, "flush_interval": 0.2, "batch_size": 10,
                           "http_timeout": 2}, matomo_port=late.port)
        sent = []
        for i in range(60):
            path = f"/late/{i:03d}"
            get(env, path, accept_language=LANGUAGES[i % 2])
            sent.append(path)
        c = wait_for_counters(env, hits_sent=len(sent), timeout=60)
        paths = stored_paths(matomo, site)
        twice = duplicates(paths)
        assert set(paths) == set(sent), "none missing"
        assert late.late_hits == 30 and c["hits_resent_after_timeout"] >= late.late_hits, c
        assert late.late_hits <= twice <= c["hits_resent_after_timeout"], (twice, c)
        [line] = log_lines(env, "no answer within http_timeout")  # one line per 10 s
        assert "retrying 10 hits" in line
        with capsys.disabled():
            print(f"\n[timeouts] {len(sent)} requests, {len(paths)} actions in Matomo, {twice} duplicates; "
                  f"{len(late.late_bodies)} calls answered after http_timeout; hits_resent_after_timeout "
                  f"{c['hits_resent_after_timeout']}, batches_failed {c['batches_failed']}, hits_sent {c['hits_sent']}")
    finally:
        late.stop()
