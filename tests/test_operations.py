"""Operating the filter: its counters in Envoy's stats, the token never in a log line, what a
crashing VM does under each `failure_policy`, and config updates through LDS."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.support import envoy as E
from tests.support.matomo import Behaviour
from tests.support.traffic import (build_trap_filter, settled_counters, timed_get,
                                   wait_counter, wait_until)

COUNTERS = ["requests_seen", "requests_tracked", "requests_ignored.route", "requests_ignored.pattern",
            "requests_ignored.user_agent", "requests_ignored.method", "hits_sent", "hits_retried",
            "hits_dropped", "hits_invalid", "batches_sent", "batches_failed"]


def config(**extra) -> dict:
    return {"matomo_url": "http://matomo.example", "id_site": 1, "batch_size": 5, "flush_interval": 0.1,
            **extra}


# --- counters ---------------------------------------------------------------------------------

def prometheus(envoy) -> dict[str, int]:
    out = {}
    for line in envoy.admin("/stats/prometheus").splitlines():
        m = re.fullmatch(r"(matomo_\w+)\{\} (\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def test_counters_are_in_stats_and_prometheus_under_documented_names(start_envoy, matomo):
    envoy = start_envoy(config(ignored_routes=["/health"], ignored_patterns=["^/static/"],
                               ignored_ua_patterns=[".*bot"], ignored_methods=["OPTIONS"]), concurrency=2)
    requests = ([("/p/1", {})] * 7 + [("/health", {})] * 2 + [("/static/a.js", {})] * 3
                + [("/p/2", {"user-agent": "Googlebot"})])
    for path, headers in requests:
        assert timed_get(envoy.port, path, headers)[0] == 200
    wait_counter(envoy, "hits_sent", 7)
    c = settled_counters(envoy)
    assert set(c) >= set(COUNTERS), f"missing: {set(COUNTERS) - set(c)}"  # all defined at start
    assert c["requests_seen"] == 13 and c["requests_tracked"] == 7 and c["hits_sent"] == 7, c
    assert (c["requests_ignored.route"], c["requests_ignored.pattern"], c["requests_ignored.user_agent"],
            c["requests_ignored.method"]) == (2, 3, 1, 0), c
    # /stats sums both workers' VMs into one counter; so does /stats/prometheus, where Envoy drops
    # the `wasmcustom.` prefix and turns dots into underscores.
    p = prometheus(envoy)
    assert p == {"matomo_" + name.replace(".", "_"): value for name, value in c.items()}, p
    text = envoy.admin("/stats/prometheus")
    assert "# TYPE matomo_hits_dropped counter" in text
    # Envoy's own VM health counters sit next to them.
    vm = envoy.counters("wasm.matomo.")
    assert set(vm) >= {"vm_reload", "vm_reload_success", "vm_reload_failure", "vm_reload_backoff"}, vm


def test_two_filters_in_one_envoy_keep_their_counters_apart_by_metrics_prefix(matomo, upstream, envoys):
    """Two instances of the filter (two plugin configs) each count only their own requests; the
    first one ignores /b, the second /a."""
    port, admin = E.free_port(), E.free_port()
    first = E.wasm_filter(config(metrics_prefix="shop", ignored_routes=["/b"]))
    second = E.wasm_filter(config(metrics_prefix="docs", ignored_routes=["/a"]))
    second["typed_config"]["config"]["name"] = "matomo-docs"
    cfg = E.bootstrap(listen_port=port, admin_port=admin, upstream_port=upstream.port, matomo_port=matomo.port,
                      http_filters=[first, second])
    envoy = E.Envoy(cfg).start()
    envoys.append(envoy)
    for path in ("/a", "/a", "/b"):
        assert timed_get(port, path)[0] == 200
    wait_until(lambda: envoy.counters("wasmcustom.shop.").get("requests_seen") == 3
               and envoy.counters("wasmcustom.docs.").get("requests_seen") == 3)
    shop, docs = envoy.counters("wasmcustom.shop."), envoy.counters("wasmcustom.docs.")
    assert (shop["requests_tracked"], shop["requests_ignored.route"]) == (2, 1), shop
    assert (docs["requests_tracked"], docs["requests_ignored.route"]) == (1, 2), docs
    assert envoy.counters("wasmcustom.matomo.") == {}


def test_the_module_says_its_version_and_source_when_its_vm_starts(start_envoy):
    envoy = start_envoy(config())
    lines = [line for line in envoy.log().splitlines() if "matomo-proxy-wasm 0." in line]
    assert lines and re.search(r"matomo-proxy-wasm \d+\.\d+\.\d+ \(source [0-9a-f]{16}\) starting", lines[0]), lines


# --- secrets ----------------------------------------------------------------------------------

TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def filter_lines(log: str) -> list[str]:
    """Lines written by the filter itself (Envoy prefixes them with `wasm log`) or by its VM."""
    return [line for line in log.splitlines() if "wasm log" in line or "[wasm]" in line]


@pytest.mark.parametrize("scenario", ["healthy", "matomo_503", "matomo_400_refused", "matomo_refusing_connections"])
def test_the_token_is_in_no_line_the_filter_logs_even_at_trace(start_envoy, matomo, scenario):
    port = E.free_port() if scenario == "matomo_refusing_connections" else None
    matomo.behaviour = {"matomo_503": Behaviour(status=503), "matomo_400_refused": Behaviour(status=400)}.get(
        scenario, Behaviour())
    envoy = start_envoy(config(token_auth=TOKEN, retry_window=1), log_level="trace", matomo_port=port)
    for i in range(12):
        timed_get(envoy.port, f"/s/{i}", {"user-agent": "secret-test"})
    settled_counters(envoy)
    time.sleep(1.0)  # retries and the drop after retry_window
    envoy.stop()
    if scenario == "healthy":
        assert matomo.calls and all(c.json()["token_auth"] == TOKEN for c in matomo.calls), "token is sent"
    lines = filter_lines(envoy.log())
    assert len(lines) > 20, "trace logging is on"
    leaked = [line for line in lines if TOKEN in line]
    assert not leaked, leaked[:3]


def test_a_refused_config_does_not_echo_the_token(start_envoy):
    assert_refused_without_the_token(start_envoy, config(token_auth=TOKEN, id_site=0))


def test_a_numeric_token_is_refused_without_echoing_it(start_envoy):
    assert_refused_without_the_token(start_envoy, config(token_auth=123456789012345678))


def assert_refused_without_the_token(start_envoy, *configs):
    for bad in configs:
        envoy = start_envoy(bad, log_level="trace", wait=False)
        assert envoy.wait_exit(30) != 0
        log = envoy.log()
        assert "invalid plugin configuration" in log
        token = str(bad["token_auth"])
        assert not [line for line in filter_lines(log) if token in line]


def test_token_from_the_host_environment_appears_in_no_log_and_no_config_dump(matomo, upstream):
    """token_auth_env with the variable taken from Envoy's own environment (`host_env_keys`,
    Istio `vmConfig.env` with `valueFrom: HOST`): the token is nowhere in Envoy's config, so not in
    its debug config dumps nor in /config_dump, unlike an inline token_auth or `key_values`."""
    listen, admin = E.free_port(), E.free_port()
    wasm = E.wasm_filter(config(token_auth_env="MATOMO_TOKEN"))
    wasm["typed_config"]["config"]["vm_config"]["environment_variables"] = {"host_env_keys": ["MATOMO_TOKEN"]}
    cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port,
                      matomo_port=matomo.port, http_filters=[wasm])
    envoy = E.Envoy(cfg, log_level="trace", env={"MATOMO_TOKEN": TOKEN})
    with envoy:
        for i in range(6):
            timed_get(listen, f"/env/{i}")
        wait_counter(envoy, "hits_sent", 5)
        dump = envoy.admin("/config_dump")
    assert matomo.calls[0].json()["token_auth"] == TOKEN
    assert "MATOMO_TOKEN" in dump and TOKEN not in dump
    log = envoy.log()
    assert "(tokens: 1" in log
    assert TOKEN not in log


def test_token_from_vm_key_values_is_used_and_not_logged_by_the_filter(start_envoy, matomo):
    envoy = start_envoy(config(token_auth_env="MATOMO_TOKEN"), vm_env={"MATOMO_TOKEN": TOKEN}, log_level="trace")
    for i in range(5):
        timed_get(envoy.port, f"/kv/{i}")
    wait_counter(envoy, "hits_sent", 5)
    envoy.stop()
    assert matomo.calls[0].json()["token_auth"] == TOKEN
    assert not [line for line in filter_lines(envoy.log()) if TOKEN in line]


# --- a crashing VM, per failure_policy -------------------------------------------------------

def run_policy(upstream, policy: str | None, reload_backoff: str | None = None) -> tuple[list[int], dict, float]:
    """Envoy with the deliberately panicking filter: one normal request, one that traps the VM,
    then requests right after and 1.5 s later. Returns the statuses, Envoy's VM counters and how
    long after the trap requests were answered 200 again (inf: never, within 3 s)."""
    listen, admin = E.free_port(), E.free_port()
    wasm = E.wasm_filter("{}", failure_policy=policy, wasm=build_trap_filter())
    if reload_backoff:
        wasm["typed_config"]["config"]["reload_config"] = {"backoff": {"base_interval": reload_backoff}}
    cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port,
                      matomo_port=E.free_port(), http_filters=[wasm])
    with E.Envoy(cfg) as envoy:
        statuses = [timed_get(listen, "/before")[0], timed_get(listen, "/trap", {"x-trap": "1"})[0]]
        trapped = time.monotonic()
        statuses += [timed_get(listen, f"/right-after/{i}")[0] for i in range(3)]
        recovered = float("inf")
        while time.monotonic() - trapped < 3:
            if timed_get(listen, "/poll")[0] == 200:
                recovered = time.monotonic() - trapped
                break
            time.sleep(0.01)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - trapped)))
        statuses += [timed_get(listen, f"/later/{i}")[0] for i in range(3)]
        return statuses, envoy.counters("wasm.matomo."), recovered


def test_default_and_fail_closed_turn_every_later_request_into_503(upstream):
    for policy in (None, "FAIL_CLOSED"):
        statuses, vm, recovered = run_policy(upstream, policy)
        assert statuses == [200, 503, 503, 503, 503, 503, 503, 503], (policy, statuses)
        assert vm["vm_reload_success"] == 0 and recovered == float("inf")


def test_fail_open_passes_requests_through_a_dead_vm(upstream):
    statuses, vm, recovered = run_policy(upstream, "FAIL_OPEN")
    assert statuses == [200, 503, 200, 200, 200, 200, 200, 200], statuses
    assert vm["vm_reload_success"] == 0  # the filter stays dead: nothing is tracked any more


def test_fail_reload_brings_a_new_vm_after_the_backoff(upstream, capsys):
    statuses, vm, recovered = run_policy(upstream, "FAIL_RELOAD")
    # Requests within the reload backoff (1 s base by default) fail like FAIL_CLOSED; then a new VM.
    assert statuses[:5] == [200, 503, 503, 503, 503] and statuses[5:] == [200, 200, 200], statuses
    assert vm["vm_reload_success"] >= 1 and vm["vm_reload_backoff"] >= 1, vm
    assert 0.5 < recovered < 2.5, recovered
    # reload_config.backoff shrinks that window of 503s.
    statuses, vm, quick = run_policy(upstream, "FAIL_RELOAD", reload_backoff="0.05s")
    assert statuses[5:] == [200, 200, 200] and vm["vm_reload_success"] >= 1, statuses
    assert quick < 0.3, quick
    with capsys.disabled():
        print(f"\n[failure_policy] FAIL_RELOAD: 200 again {recovered:.2f} s after the crash "
              f"(default backoff), {quick:.3f} s with reload_config.backoff.base_interval 0.05s")


def test_a_corrupt_module_stops_envoy_from_starting_whatever_the_policy(upstream, tmp_path):
    garbage = tmp_path / "garbage.wasm"
    garbage.write_bytes(b"\0asm\x01\0\0\0" + os.urandom(512))
    for policy in (None, "FAIL_OPEN", "FAIL_RELOAD"):
        cfg = E.bootstrap(listen_port=E.free_port(), admin_port=E.free_port(), upstream_port=upstream.port,
                          matomo_port=E.free_port(),
                          http_filters=[E.wasm_filter(config(), failure_policy=policy, wasm=garbage)])
        envoy = E.Envoy(cfg).start(wait=False)
        try:
            assert envoy.wait_exit(30) != 0
        finally:
            envoy.stop()
        assert "Unable to create Wasm plugin matomo" in envoy.log(), envoy.log()[-1500:]


# --- config updates through LDS ----------------------------------------------------------------

class LdsEnvoy:
    """Envoy whose listener comes from a file (LDS), rewritten and moved into place to update it."""

    def __init__(self, tmp: Path, upstream_port: int, matomo_port: int):
        self.dir = tmp
        self.lds = tmp / "lds.yaml"
        self.listen, admin = E.free_port(), E.free_port()
        self.upstream_port, self.matomo_port = upstream_port, matomo_port
        self.version = 0
        base = E.bootstrap(listen_port=self.listen, admin_port=admin, upstream_port=upstream_port,
                           matomo_port=matomo_port, http_filters=[])
        self.bootstrap = {
            "node": {"id": "test", "cluster": "test"},
            "admin": base["admin"],
            "static_resources": {"clusters": base["static_resources"]["clusters"]},
            "dynamic_resources": {"lds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": str(self.lds), "watched_directory": {"path": str(tmp)}}}},
        }

    def write(self, plugin_config: dict | str) -> None:
        listener = E.bootstrap(listen_port=self.listen, admin_port=0, upstream_port=self.upstream_port,
                               matomo_port=self.matomo_port,
                               http_filters=[E.wasm_filter(plugin_config)])["static_resources"]["listeners"][0]
        self.version += 1
        doc = {"version_info": str(self.version),
               "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.dir / f".lds-{self.version}.yaml"
        tmp.write_text(json.dumps(doc))
        os.rename(tmp, self.lds)  # an atomic move: what Envoy's file watch reacts to


def test_lds_update_bad_config_is_rejected_and_good_config_applies(matomo, upstream, tmp_path):
    lds = LdsEnvoy(tmp_path, upstream.port, matomo.port)
    lds.write(config(id_site=3))
    envoy = E.Envoy(lds.bootstrap)
    with envoy:
        assert wait_until(lambda: timed_get(lds.listen, "/v1")[0] == 200 if _open(lds.listen) else False, 20)
        matomo.wait_for_hits(1)
        assert {h["idsite"] for h in matomo.hits} == {"3"}

        def stat(name):
            return int(dict(line.split(": ", 1) for line in envoy.admin(f"/stats?filter=^{name}$").splitlines()
                            if ": " in line).get(name, 0))

        # A config the filter refuses (id_site 0): Envoy rejects the whole update and keeps the
        # listener it has, which keeps tracking.
        lds.write(config(id_site=0))
        assert wait_until(lambda: stat("listener_manager.lds.update_rejected") >= 1, 15), envoy.log()[-3000:]
        assert "invalid plugin configuration: `id_site`" in envoy.log()
        before = len(matomo.hits)
        for i in range(5):
            assert timed_get(lds.listen, f"/after-bad/{i}")[0] == 200
        hits = matomo.wait_for_hits(before + 5)
        assert [h["idsite"] for h in hits[before:]] == ["3"] * 5

        # A good update takes effect for new connections.
        lds.write(config(id_site=7))
        assert wait_until(lambda: stat("listener_manager.lds.update_success") >= 2, 15)
        before = len(matomo.hits)
        assert wait_until(lambda: timed_get(lds.listen, "/probe")[0] == 200 and
                          (matomo.wait_for_hits(len(matomo.hits) + 1, 2)[-1]["idsite"] == "7"), 15)
        for i in range(5):
            timed_get(lds.listen, f"/after-good/{i}")
        hits = matomo.wait_for_hits(len(matomo.hits) + 5)
        assert [h["idsite"] for h in hits[-5:]] == ["7"] * 5
        assert stat("listener_manager.lds.update_rejected") == 1


def _open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
