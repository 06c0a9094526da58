"""envoy/xds: the filter delivered by xDS from files. Envoy starts from the shipped bootstrap,
lds.yaml and cds.yaml (addresses pointed at loopback), tracks a request, then picks up a new
plugin configuration moved into place without a restart."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import yaml

from tests.support import envoy as E

XDS = E.ROOT / "envoy/xds"
TOKEN = "xds-token-0123456789"


def load(name: str) -> dict:
    return yaml.safe_load((XDS / name).read_text())


def plugin_config(lds: dict) -> dict:
    [listener] = lds["resources"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [wasm] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    return wasm["typed_config"]["config"]


def write(path, doc: dict) -> None:
    """As an operator (or a ConfigMap) must: a new file moved over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, path)




class XdsEnvoy:
    """Envoy started from the shipped xDS files, pointed at loopback."""

    def __init__(self, tmp_path, matomo, upstream, envoys, **plugin_overrides):
        self.dir = tmp_path
        self.listen, admin = E.free_port(), E.free_port()
        boot, self.lds, cds = load("bootstrap.yaml"), load("lds.yaml"), load("cds.yaml")
        # Same resources, on loopback: the listener's port, the app, Matomo in plaintext.
        boot["admin"]["address"]["socket_address"]["port_value"] = admin
        for kind in ("lds_config", "cds_config"):
            source = boot["dynamic_resources"][kind]["path_config_source"]
            source["path"] = str(tmp_path / source["path"].rsplit("/", 1)[1])
            source["watched_directory"]["path"] = str(tmp_path)
        self.lds["resources"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=self.listen)
        self.plugin = plugin_config(self.lds)
        self.plugin["vm_config"]["code"]["local"]["filename"] = str(E.WASM)
        if plugin_overrides:
            self.set_plugin(**plugin_overrides)
        for c in cds["resources"]:
            port = upstream.port if c["name"] == "app" else matomo.port
            c.pop("transport_socket", None)
            c["type"] = "STATIC"
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
                "address": "127.0.0.1", "port_value": port}
        write(tmp_path / "lds.yaml", self.lds)
        write(tmp_path / "cds.yaml", cds)
        # A short drain, so a replaced listener (and its plugin) goes away within the test.
        self.envoy = E.Envoy(boot, env={"MATOMO_TOKEN_AUTH": TOKEN}, extra_args=("--drain-time-s", "1"))
        envoys.append(self.envoy)
        self.envoy.start()

    def set_plugin(self, **changes) -> None:
        config = json.loads(self.plugin["configuration"]["value"])
        self.plugin["configuration"]["value"] = json.dumps({**config, **changes})

    def get(self, path: str) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.listen}{path}", timeout=5).read()

    def update(self, **changes) -> None:
        """A new plugin configuration through LDS, waited for until Envoy applied it."""
        applied = self.envoy.counters("listener_manager.lds.").get("update_success", 0)
        self.set_plugin(**changes)
        write(self.dir / "lds.yaml", self.lds)
        deadline = time.monotonic() + 10
        while self.envoy.counters("listener_manager.lds.").get("update_success", 0) <= applied:
            assert time.monotonic() < deadline, "LDS update not applied"
            time.sleep(0.05)


def test_xds_files_deliver_the_filter_and_its_updates(tmp_path, matomo, upstream, envoys):
    xds = XdsEnvoy(tmp_path, matomo, upstream, envoys)
    xds.get("/first")
    [hit] = matomo.wait_for_hits(1)
    assert hit["idsite"] == "1" and hit["url"].endswith("/first")
    assert matomo.calls[0].json()["token_auth"] == TOKEN

    xds.update(id_site=7)  # the next requests go to site 7
    xds.get("/second")
    hits = matomo.wait_for_hits(2)
    assert [(h["idsite"], h["url"].rsplit("/", 1)[1]) for h in hits] == [("1", "first"), ("7", "second")]


def test_hits_queued_by_a_replaced_listener_are_sent_not_lost(tmp_path, matomo, upstream, envoys):
    # A long flush_interval keeps hits queued; replacing the listener must not lose them.
    xds = XdsEnvoy(tmp_path, matomo, upstream, envoys, flush_interval=600)
    for i in range(5):
        xds.get(f"/queued/{i}")
    time.sleep(0.3)
    assert matomo.hits == []
    xds.update(id_site=7)
    hits = matomo.wait_for_hits(5, timeout=20)  # sent when Envoy drops the old plugin (on_done)
    assert sorted(h["url"].rsplit("/", 1)[1] for h in hits) == [str(i) for i in range(5)]
    assert {h["idsite"] for h in hits} == {"1"}
    assert "finishing: sending the last 5 hits" in xds.envoy.log()
