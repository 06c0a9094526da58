"""The shipped Envoy configs (envoy/envoy.yaml, envoy/xds/) as the tests run them: the same
documents with only their addresses changed, so that they run on loopback beside other Envoys.
The listener and the admin move to free ports, the `app` cluster to the demo app, and the
`matomo` cluster to a local Matomo in plaintext (the shipped one reaches matomo.example.com over
TLS). The module path stays relative: run them from the repository root, as docs/deployment.md says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
XDS = ROOT / "envoy/xds"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write(path: Path, doc: dict) -> None:
    """As an operator (or a ConfigMap) must for a watched xDS file: a new file moved over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, path)


def plugin_config(listener: dict) -> dict:
    """The `config` of the listener's wasm filter."""
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [wasm] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    return wasm["typed_config"]["config"]


def update_plugin(listener: dict, **changes) -> None:
    """Merges `changes` into the plugin JSON of the listener's filter."""
    value = plugin_config(listener)["configuration"]
    value["value"] = json.dumps({**json.loads(value["value"]), **changes})


def to_loopback(listener: dict, clusters: list[dict], *, listen_port: int, app_port: int,
                matomo_port: int) -> None:
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    for c in clusters:
        cluster_on_loopback(c, [app_port if c["name"] == "app" else matomo_port])


def cluster_on_loopback(cluster: dict, ports: list[int]) -> None:
    """The cluster in plaintext, its endpoints (however many) on 127.0.0.1: one per port, or every
    one on the single port given."""
    cluster.pop("transport_socket", None)
    cluster["type"] = "STATIC"
    endpoints = [e for locality in cluster["load_assignment"]["endpoints"] for e in locality["lb_endpoints"]]
    if len(ports) == 1:
        ports = ports * len(endpoints)
    assert len(ports) == len(endpoints), (ports, len(endpoints))
    for endpoint, port in zip(endpoints, ports):
        endpoint["endpoint"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}


def matomo_cluster(ports: list[int]) -> dict:
    """envoy/envoy.yaml's `matomo` cluster (health checks, outlier detection, circuit breakers) in
    plaintext, with its tracker servers on these loopback ports."""
    [cluster] = [c for c in load(ROOT / "envoy/envoy.yaml")["static_resources"]["clusters"] if c["name"] == "matomo"]
    cluster_on_loopback(cluster, ports)
    return cluster


def static_config(*, listen_port: int, admin_port: int, app_port: int, matomo_port: int, **plugin) -> dict:
    """envoy/envoy.yaml on loopback; `plugin` changes its plugin JSON."""
    config = load(ROOT / "envoy/envoy.yaml")
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = config["static_resources"]
    [listener] = resources["listeners"]
    to_loopback(listener, resources["clusters"], listen_port=listen_port, app_port=app_port, matomo_port=matomo_port)
    if plugin:
        update_plugin(listener, **plugin)
    return config


def xds_config(directory: Path, *, listen_port: int, admin_port: int, app_port: int, matomo_port: int,
               **plugin) -> tuple[dict, dict]:
    """envoy/xds on loopback: writes its lds.yaml and cds.yaml into `directory` and returns the
    bootstrap that watches them, and the LDS document (to write changed versions of)."""
    boot, lds, cds = (load(XDS / name) for name in ("bootstrap.yaml", "lds.yaml", "cds.yaml"))
    boot["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for kind in ("lds_config", "cds_config"):
        source = boot["dynamic_resources"][kind]["path_config_source"]
        source["path"] = str(directory / Path(source["path"]).name)
        source["watched_directory"]["path"] = str(directory)
    [listener] = lds["resources"]
    to_loopback(listener, cds["resources"], listen_port=listen_port, app_port=app_port, matomo_port=matomo_port)
    if plugin:
        update_plugin(listener, **plugin)
    write(directory / "lds.yaml", lds)
    write(directory / "cds.yaml", cds)
    return boot, lds
