"""The shipped WasmPlugins, run by real Envoy configured the way istiod renders a WasmPlugin
(pilot/pkg/model/extensions.go): configuration = pluginConfig as JSON in a StringValue, filter
name `<namespace>.<name>`, root_id = `pluginName` (empty when unset), vmConfig.env HOST entries
as `host_env_keys` read from istio-proxy's own environment, and the Matomo cluster under Istio's
name `outbound|443||<host>`, here pointing at the local stand-in (plaintext on loopback, where
Istio's DestinationRule would originate TLS)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import yaml

from tests.support import envoy as E

ISTIO = E.ROOT / "envoy/istio"
TOKEN = "istio-secret-token-0123456789abcdef"
# Envoy failure_policy for each Istio failStrategy.
FAIL_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


def wasm_plugins() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(ISTIO.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "WasmPlugin":
                out.append((path.name, doc))
    return out


def istio_wasm_filter(plugin: dict) -> dict:
    """The HTTP filter istiod sends for this WasmPlugin, with the module as a local file (the
    istio-agent downloads the OCI image and rewrites the remote source to a local file)."""
    spec = plugin["spec"]
    env = spec.get("vmConfig", {}).get("env", [])
    key_values = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
    key_values.update({e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"})
    host_keys = [e["name"] for e in env if e.get("valueFrom") == "HOST"]
    vm_config = {
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(E.WASM)}},
        "environment_variables": {"key_values": key_values, "host_env_keys": host_keys},
    }
    return {
        "name": f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}",
                "root_id": spec.get("pluginName", ""),
                # protojson of the Struct: compact JSON
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(spec["pluginConfig"], separators=(",", ":"))},
                "vm_config": vm_config,
                "failure_policy": FAIL_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
            },
        },
    }




def get(port: int, path: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()
        return r.status


@pytest.mark.parametrize("source,plugin", wasm_plugins(), ids=[n for n, _ in wasm_plugins()])
def test_istio_rendered_wasmplugin_tracks_with_the_token_from_the_proxy_environment(
        source, plugin, matomo, upstream, envoys):
    config = plugin["spec"]["pluginConfig"]
    cluster = config["matomo_cluster"]
    assert cluster.startswith("outbound|443||")
    listen, admin = E.free_port(), E.free_port()
    boot = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port,
                       matomo_port=matomo.port, matomo_cluster=cluster,
                       http_filters=[istio_wasm_filter(plugin)])
    # The token is in istio-proxy's environment (from the Secret), never in the config.
    assert TOKEN not in json.dumps(boot)
    envoy = E.Envoy(boot, env={"MATOMO_TOKEN_AUTH": TOKEN})
    envoys.append(envoy)
    envoy.start()

    ignored = config["ignored_routes"][0]
    assert get(listen, ignored) == 200
    assert get(listen, "/products/42?ref=mail", {"User-Agent": "Mozilla/5.0 (X11; Linux)"}) == 200
    hits = matomo.wait_for_hits(1)
    assert len(hits) == 1, hits  # the ignored route was not tracked
    hit = hits[0]
    assert hit["idsite"] == str(config["id_site"])
    assert hit["cip"] == "127.0.0.1"
    assert "/products/42" in hit["url"]

    call = matomo.calls[0]
    assert call.json()["token_auth"] == TOKEN
    url = config["matomo_url"]
    host, _, path = url.split("://", 1)[1].partition("/")
    assert call.path == "/" + path
    assert {k.lower(): v for k, v in call.headers.items()}["host"] == host


def test_without_the_secret_in_the_proxy_environment_the_plugin_is_refused(envoys, tmp_path):
    """A pod patched without MATOMO_TOKEN_AUTH: the filter names token_auth_env and Envoy
    refuses the config, rather than tracking without the token (and without visitors' IPs)."""
    _, plugin = wasm_plugins()[0]
    cluster = plugin["spec"]["pluginConfig"]["matomo_cluster"]
    boot = E.bootstrap(listen_port=E.free_port(), admin_port=E.free_port(), upstream_port=1,
                       matomo_port=1, matomo_cluster=cluster, http_filters=[istio_wasm_filter(plugin)])
    envoy = E.Envoy(boot, env={"MATOMO_TOKEN_AUTH": ""})
    envoy.env.pop("MATOMO_TOKEN_AUTH")
    envoys.append(envoy)
    envoy.start(wait=False)
    assert envoy.wait_exit(60) != 0
    assert "`token_auth_env`" in envoy.log()
