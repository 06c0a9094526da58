"""envoy/xds: the filter delivered by xDS from files. Envoy starts from the shipped bootstrap,
lds.yaml and cds.yaml (addresses pointed at loopback), tracks a request, then picks up a new
plugin configuration moved into place without a restart."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest
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


@pytest.fixture
def envoys(request):
    started: list[E.Envoy] = []
    yield started
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for envoy in started:
        envoy.stop()
        if failed:
            print(f"\n----- Envoy log ({envoy.config_path}) -----\n{envoy.log()}")


def test_xds_files_deliver_the_filter_and_its_updates(tmp_path, matomo, upstream, envoys):
    listen, admin = E.free_port(), E.free_port()
    boot, lds, cds = load("bootstrap.yaml"), load("lds.yaml"), load("cds.yaml")
    # Same resources, on loopback: the listener's port, the app, Matomo in plaintext.
    boot["admin"]["address"]["socket_address"]["port_value"] = admin
    for kind in ("lds_config", "cds_config"):
        source = boot["dynamic_resources"][kind]["path_config_source"]
        source["path"] = str(tmp_path / source["path"].rsplit("/", 1)[1])
        source["watched_directory"]["path"] = str(tmp_path)
    lds["resources"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=listen)
    plugin = plugin_config(lds)
    plugin["vm_config"]["code"]["local"]["filename"] = str(E.WASM)
    for c in cds["resources"]:
        port = upstream.port if c["name"] == "app" else matomo.port
        c.pop("transport_socket", None)
        c["type"] = "STATIC"
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
            "address": "127.0.0.1", "port_value": port}
    write(tmp_path / "lds.yaml", lds)
    write(tmp_path / "cds.yaml", cds)
    envoy = E.Envoy(boot, env={"MATOMO_TOKEN_AUTH": TOKEN})
    envoys.append(envoy)
    envoy.start()

    urllib.request.urlopen(f"http://127.0.0.1:{listen}/first", timeout=5).read()
    [hit] = matomo.wait_for_hits(1)
    assert hit["idsite"] == "1" and hit["url"].endswith("/first")
    assert matomo.calls[0].json()["token_auth"] == TOKEN

    # A new plugin configuration through LDS: the next requests go to site 7.
    config = json.loads(plugin["configuration"]["value"])
    plugin["configuration"]["value"] = json.dumps({**config, "id_site": 7})
    write(tmp_path / "lds.yaml", lds)
    deadline = time.monotonic() + 10
    while envoy.counters("listener_manager.lds.").get("update_success", 0) < 2:
        assert time.monotonic() < deadline, "LDS update not applied"
        time.sleep(0.05)
    urllib.request.urlopen(f"http://127.0.0.1:{listen}/second", timeout=5).read()
    hits = matomo.wait_for_hits(2)
    assert [(h["idsite"], h["url"].rsplit("/", 1)[1]) for h in hits] == [("1", "first"), ("7", "second")]
