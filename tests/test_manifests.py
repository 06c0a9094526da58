"""Every shipped manifest: the Istio ones have the fields Istio requires, agree with each other
(cluster name, host, token variable), and their pluginConfig loads in real Envoy by the path a
proxy takes; every Envoy YAML under envoy/ passes `envoy --mode validate`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import envoy as E

ENVOY_DIR = E.ROOT / "envoy"
ISTIO = ENVOY_DIR / "istio"
C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def istio_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(ISTIO.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


DOCS = istio_docs()
OBJECTS = [(n, d) for n, d in DOCS if "kind" in d]


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in OBJECTS if d["kind"] == kind]


def test_there_are_manifests_for_a_sidecar_a_gateway_and_the_egress():
    kinds = sorted(d["kind"] for _, d in OBJECTS)
    assert kinds.count("WasmPlugin") == 2
    assert {"ServiceEntry", "DestinationRule", "Secret"} <= set(kinds)
    selectors = [d["spec"]["selector"]["matchLabels"] for _, d in of_kind("WasmPlugin")]
    assert {"istio": "ingressgateway"} in selectors


@pytest.mark.parametrize("source,doc", OBJECTS, ids=[f"{n}:{d['kind']}" for n, d in OBJECTS])
def test_every_object_has_apiversion_kind_and_name(source, doc):
    assert re.match(r"^([a-z0-9.-]+/)?v[0-9]+((alpha|beta)[0-9]+)?$", doc["apiVersion"]), doc["apiVersion"]
    assert re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", doc["metadata"]["name"])
    assert doc["metadata"].get("namespace"), "say where it goes"


@pytest.mark.parametrize("source,plugin", of_kind("WasmPlugin"), ids=[n for n, _ in of_kind("WasmPlugin")])
def test_wasmplugin_fields(source, plugin):
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = plugin["spec"]
    assert re.match(r"^(oci|https?|file)://", spec["url"]), spec["url"]
    assert HEX64.match(spec["sha256"]), "sha256 must be 64 lowercase hex digits (Istio's pattern)"
    assert spec["selector"]["matchLabels"]
    assert spec["phase"] in ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
    assert isinstance(spec.get("priority", 0), int)
    # Only FAIL_OPEN also covers a module that cannot be fetched; tracking must not cost traffic.
    assert spec["failStrategy"] == "FAIL_OPEN"
    assert spec.get("imagePullPolicy", "IfNotPresent") in ("IfNotPresent", "Always", "UNSPECIFIED_POLICY")
    for m in spec.get("match", []):
        assert m["mode"] in ("CLIENT", "SERVER", "CLIENT_AND_SERVER", "UNDEFINED")
    config = spec["pluginConfig"]
    assert "token_auth" not in config and "access_token" not in config, "the token belongs in a Secret"
    env = {e["name"]: e for e in spec["vmConfig"]["env"]}
    for name, e in env.items():
        assert C_IDENTIFIER.match(name)
        assert e.get("valueFrom", "INLINE") in ("INLINE", "HOST")
        assert e.get("valueFrom") != "HOST" or "value" not in e, "Istio: value only with INLINE"
    assert env[config["token_auth_env"]]["valueFrom"] == "HOST"


@pytest.mark.parametrize("source,se", of_kind("ServiceEntry"), ids=[n for n, _ in of_kind("ServiceEntry")])
def test_serviceentry_fields(source, se):
    assert se["apiVersion"].startswith("networking.istio.io/")
    spec = se["spec"]
    assert spec["hosts"] and all(isinstance(h, str) for h in spec["hosts"])
    assert spec["resolution"] in ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
    assert spec["location"] in ("MESH_EXTERNAL", "MESH_INTERNAL")
    for port in spec["ports"]:
        assert isinstance(port["number"], int) and port["name"]
        assert port["protocol"] in ("HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "MONGO")


@pytest.mark.parametrize("source,dr", of_kind("DestinationRule"), ids=[n for n, _ in of_kind("DestinationRule")])
def test_destinationrule_originates_tls_with_sni(source, dr):
    assert dr["apiVersion"].startswith("networking.istio.io/")
    tls = dr["spec"]["trafficPolicy"]["tls"]
    assert tls["mode"] == "SIMPLE"
    assert tls["sni"] == dr["spec"]["host"]
    assert "insecureSkipVerify" not in tls


@pytest.mark.parametrize("source,plugin", of_kind("WasmPlugin"), ids=[n for n, _ in of_kind("WasmPlugin")])
def test_wasmplugin_agrees_with_the_egress_and_the_secret(source, plugin):
    config = plugin["spec"]["pluginConfig"]
    host = config["matomo_url"].split("://", 1)[1].split("/", 1)[0]
    # Istio names a ServiceEntry's cluster outbound|<port>||<host>.
    clusters = {f"outbound|{p['number']}||{h}": h
                for _, se in of_kind("ServiceEntry") for h in se["spec"]["hosts"] for p in se["spec"]["ports"]}
    assert config["matomo_cluster"] in clusters, (config["matomo_cluster"], sorted(clusters))
    assert clusters[config["matomo_cluster"]] == host, "matomo_url's host is the ServiceEntry's"
    assert host in {dr["spec"]["host"] for _, dr in of_kind("DestinationRule")}
    # The variable the VM reads is the one the pod patch sets, from the shipped Secret.
    [(_, secret)] = of_kind("Secret")
    patches = [d for _, d in DOCS if "kind" not in d]
    assert patches, "the istio-proxy env patch"
    for patch in patches:
        [proxy] = [c for c in patch["spec"]["template"]["spec"]["containers"] if c["name"] == "istio-proxy"]
        [var] = [e for e in proxy["env"] if e["name"] == config["token_auth_env"]]
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
        assert not ref.get("optional"), "without the token the filter refuses its config"


@pytest.mark.parametrize("source,plugin", of_kind("WasmPlugin"), ids=[n for n, _ in of_kind("WasmPlugin")])
def test_pluginconfig_loads_in_envoy_and_a_broken_copy_is_refused(source, plugin, start_envoy):
    config = plugin["spec"]["pluginConfig"]
    # As istiod sends it: the Struct as compact JSON.
    as_istio = json.dumps(config, separators=(",", ":"))
    env = start_envoy(as_istio, vm_env={config["token_auth_env"]: "t"}, root_id=plugin["spec"].get("pluginName", ""),
                      matomo_cluster=config["matomo_cluster"])
    ids = sorted({config["id_site"], *(site["id_site"] for site in config.get("sites", []))})
    named = ", ".join(str(i) for i in ids)
    assert f"tracking site{'s' if len(ids) > 1 else ''} {named} to " in env.log(), env.log()[-3000:]
    env.stop()

    broken = json.dumps({**config, "batch_size": 0}, separators=(",", ":"))
    env = start_envoy(broken, vm_env={config["token_auth_env"]: "t"}, matomo_cluster=config["matomo_cluster"],
                      wait=False)
    assert env.wait_exit(60) != 0, "Envoy must refuse a broken pluginConfig"
    assert "`batch_size`" in env.log()


def envoy_yamls() -> list[Path]:
    return sorted(p for p in ENVOY_DIR.rglob("*.yaml") if ISTIO not in p.parents)


def is_xds_resources(path: Path) -> bool:
    return "resources" in yaml.safe_load(path.read_text())


def validate(path: Path) -> subprocess.CompletedProcess:
    """`envoy --mode validate` from the repository root (where the shipped configs' relative
    module path points), with the token variable the shipped configs read."""
    return E.validate(path, env={"MATOMO_TOKEN_AUTH": "t"}, cwd=E.ROOT)


BOOTSTRAPS = [p for p in envoy_yamls() if not is_xds_resources(p)]
XDS_DIRS = sorted({p.parent for p in envoy_yamls() if is_xds_resources(p)})


def test_the_envoy_configs_are_found():
    assert ENVOY_DIR / "xds/bootstrap.yaml" in BOOTSTRAPS and ENVOY_DIR / "xds" in XDS_DIRS


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=lambda p: str(p.relative_to(ENVOY_DIR)))
def test_every_envoy_bootstrap_validates(path):
    """Validate mode loads static resources (running the filter's on_configure) but not files
    named by dynamic_resources; those are checked by the next test."""
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("directory", XDS_DIRS, ids=lambda p: str(p.relative_to(ENVOY_DIR)))
def test_xds_resource_files_validate_together(directory, tmp_path):
    """lds.yaml's routes name cds.yaml's clusters, so their resources are validated as one
    static config."""
    kinds = {"type.googleapis.com/envoy.config.listener.v3.Listener": "listeners",
             "type.googleapis.com/envoy.config.cluster.v3.Cluster": "clusters"}
    static: dict = {"listeners": [], "clusters": []}
    for path in sorted(directory.glob("*.yaml")):
        if is_xds_resources(path):
            for r in yaml.safe_load(path.read_text())["resources"]:
                static[kinds[r["@type"]]].append({k: v for k, v in r.items() if k != "@type"})
    assert static["listeners"] and static["clusters"]
    config = tmp_path / "static.yaml"
    config.write_text(json.dumps({"static_resources": static}))
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_istio_matomo_cluster_has_the_settings_of_envoy_yamls(tmp_path):
    """Several tracker servers in Istio: the ServiceEntry's endpoints, the DestinationRule's
    outlier detection and the EnvoyFilter's active health checks (Istio's API has no field for
    them) say what envoy/envoy.yaml's matomo cluster says, and the cluster Istio renders with
    the patch merged passes `envoy --mode validate`."""
    [(_, se)] = of_kind("ServiceEntry")
    [(_, dr)] = of_kind("DestinationRule")
    [(_, ef)] = of_kind("EnvoyFilter")
    [shipped] = [c for c in yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())["static_resources"]["clusters"]
                 if c["name"] == "matomo"]
    [host], [port] = se["spec"]["hosts"], se["spec"]["ports"]
    servers = [e["address"] for e in se["spec"]["endpoints"]]
    assert len(servers) >= 2
    [patch] = ef["spec"]["configPatches"]
    assert patch["applyTo"] == "CLUSTER" and patch["patch"]["operation"] == "MERGE"
    assert patch["match"]["cluster"] == {"service": host, "portNumber": port["number"]}
    assert patch["patch"]["value"]["health_checks"] == shipped["health_checks"]
    outliers = dr["spec"]["trafficPolicy"]["outlierDetection"]
    wanted = shipped["outlier_detection"]
    assert (outliers["consecutive5xxErrors"], outliers["consecutiveGatewayErrors"], outliers["interval"],
            outliers["baseEjectionTime"], outliers["maxEjectionPercent"]) == \
        (wanted["consecutive_5xx"], wanted["consecutive_gateway_failure"], wanted["interval"],
         wanted["base_ejection_time"], wanted["max_ejection_percent"])
    # The one outlier setting the DestinationRule has no field for comes with the patch.
    uneject = "successful_active_health_check_uneject_host"
    assert patch["patch"]["value"]["outlier_detection"] == {uneject: wanted[uneject]}
    name = f"outbound|{port['number']}||{host}"
    rendered = {
        "name": name, "type": "STRICT_DNS", "connect_timeout": dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]
        ["connectTimeout"],
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": s, "port_value": port["number"]}}}}
            for s in servers]}]},
        **patch["patch"]["value"],
    }
    config = tmp_path / "istio-matomo-cluster.json"
    config.write_text(json.dumps({"static_resources": {"clusters": [rendered]}}))
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readmes_wasmplugin_is_the_shipped_sidecar_one_in_short():
    """README.md's WasmPlugin: every field it shows is the shipped sidecar plugin's, but the image."""
    [snippet] = [b for b in re.findall(r"```yaml\n(.*?)```", (E.ROOT / "README.md").read_text(), re.S)
                 if "kind: WasmPlugin" in b]
    short = yaml.safe_load(snippet)
    [(_, shipped)] = [(n, d) for n, d in of_kind("WasmPlugin") if n == "wasmplugin-sidecar.yaml"]

    def differing(mine, theirs, at=""):
        if isinstance(mine, dict):
            return [d for k, v in mine.items() for d in differing(v, theirs.get(k), f"{at}.{k}")]
        return [] if mine == theirs else [f"{at}: README {mine!r}, shipped {theirs!r}"]

    image = {".spec.url", ".spec.sha256"}
    assert [d for d in differing(short, shipped) if d.split(":")[0] not in image] == []
