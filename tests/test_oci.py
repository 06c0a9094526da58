"""The OCI image Istio pulls: built from the current module, pushed to a real registry and
pulled back with skopeo, in the layout Istio's Wasm fetcher accepts, pinned by the WasmPlugins."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request

import pytest

from tests.support import envoy as E
from tests.support import oci

ISTIO = E.ROOT / "envoy/istio"
NAME = "matomo-proxy-wasm"
OCI_MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def pinned_digests() -> dict[str, str]:
    """The `sha256:` of every shipped WasmPlugin, by file name."""
    out = {}
    for path in sorted(ISTIO.glob("*.yaml")):
        text = path.read_text()
        if "kind: WasmPlugin" in text:
            m = re.search(r"^\s*sha256:\s*([0-9a-f]{64})\s*(#.*)?$", text, re.M)
            out[path.name] = m.group(1) if m else None
    return out


@pytest.fixture
def image(tmp_path):
    module = E.WASM.read_bytes()
    return module, oci.build(module, tmp_path / "oci", oci.version()), tmp_path / "oci"


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry (the CNCF distribution registry) on a free loopback port, with
    its own storage; stopped after the test."""
    binary = shutil.which("docker-registry")
    if not binary or not shutil.which("skopeo"):
        pytest.skip("needs docker-registry and skopeo (Debian packages; .ci/run installs them)")
    port = E.free_port()
    config = tmp_path / "registry.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"registry did not start:\n{(tmp_path / 'registry.log').read_text()}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def skopeo(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, timeout=60)
    assert r.returncode == 0, f"skopeo {' '.join(args)}:\n{r.stderr.decode()}"
    return r


def test_push_and_pull_back_gives_the_layout_istio_accepts(image, registry, tmp_path):
    module, built, layout = image
    tag = built["tag"]
    ref = f"docker://{registry}/{NAME}:{tag}"
    skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:{tag}", ref)

    # What Istio's fetcher reads: the manifest, and the digest the registry serves it under
    # (compared with WasmPlugin `sha256`).
    req = urllib.request.Request(f"http://{registry}/v2/{NAME}/manifests/{tag}",
                                 headers={"Accept": OCI_MANIFEST_ACCEPT})
    with urllib.request.urlopen(req, timeout=5) as r:
        raw, served_digest = r.read(), r.headers["Docker-Content-Digest"]
    assert served_digest == f"sha256:{built['manifest_digest']}"
    assert hashlib.sha256(raw).hexdigest() == built["manifest_digest"]
    manifest = json.loads(raw)
    assert manifest["mediaType"] == oci.MANIFEST
    assert manifest["config"]["mediaType"] == oci.CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [oci.LAYER]
    assert manifest["annotations"][oci.VARIANT] == "compat"

    # Pulled back, the single layer is a tar.gz holding plugin.wasm, the module itself.
    pulled = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{pulled}:{tag}")
    digest = manifest["layers"][0]["digest"].removeprefix("sha256:")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((pulled / "blobs/sha256" / digest).read_bytes()))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        wasm = tar.extractfile(members[0]).read()
    assert wasm[:4] == b"\0asm"
    assert hashlib.sha256(wasm).hexdigest() == hashlib.sha256(module).hexdigest()

    # And skopeo's own reading agrees on the digest and the single layer.
    info = json.loads(skopeo("inspect", "--tls-verify=false", ref).stdout)
    assert info["Digest"] == served_digest
    assert info["Layers"] == [manifest["layers"][0]["digest"]]


def test_the_wasmplugins_pin_the_image_of_the_current_module(image):
    """Fails when the module changed and `make oci` was not run to update envoy/istio."""
    _, built, _ = image
    pins = pinned_digests()
    assert pins, "no WasmPlugin under envoy/istio"
    stale = {name: pin for name, pin in pins.items() if pin != built["manifest_digest"]}
    assert not stale, (f"WasmPlugin sha256 differs from this module's image "
                       f"sha256:{built['manifest_digest']} in {sorted(stale)}: run `make oci`")


def test_the_image_is_the_same_bytes_every_time(image, tmp_path):
    module, built, first = image
    again = oci.build(module, tmp_path / "again", built["tag"])
    assert again == built
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert (first / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    # A different module gives a different image.
    assert oci.build(module + b"\0", tmp_path / "other", built["tag"])["manifest_digest"] != built["manifest_digest"]


def test_make_oci_rewrites_only_wasmplugin_pins(tmp_path):
    (tmp_path / "p.yaml").write_text("kind: WasmPlugin\nspec:\n  sha256: " + "0" * 64 + "  # pin\n")
    (tmp_path / "se.yaml").write_text("kind: ServiceEntry\nspec:\n  sha256: " + "0" * 64 + "\n")
    changed = oci.update_manifests(tmp_path, "ab" * 32)
    assert changed == [tmp_path / "p.yaml"]
    assert (tmp_path / "p.yaml").read_text() == "kind: WasmPlugin\nspec:\n  sha256: " + "ab" * 32 + "  # pin\n"
    assert "0" * 64 in (tmp_path / "se.yaml").read_text()
