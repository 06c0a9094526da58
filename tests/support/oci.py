"""The release module as an OCI image that Istio's Wasm fetcher pulls (`make oci`).

Istio accepts the Wasm image spec's *compat* variant: one `application/vnd.oci.image.layer.v1
.tar+gzip` layer holding `plugin.wasm`, and the `module.wasm.image/variant: compat` manifest
annotation. Standard tools (skopeo, crane, docker, registries) handle it like any image.

The image is written here, byte by byte, because Istio pins an OCI image by its *manifest
digest* (WasmPlugin `sha256`), so the same module must always give the same digest: no
timestamps, fixed owner and mode, gzip without name or time. buildah and umoci record creation
times and history, which would change the digest on every build. skopeo then pushes the layout
unchanged (`--preserve-digests`).

    python3 -m tests.support.oci build [--wasm F] [--out build] [--update-manifests envoy/istio]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target/wasm32-wasip1/release/matomo_proxy_wasm.wasm"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT = "module.wasm.image/variant"
# Matches the `sha256:` line of a WasmPlugin (64 hex digits, or a placeholder of zeros).
SHA_LINE = re.compile(r"^(\s*sha256:\s*)[0-9a-f]{64}(\s*(#.*)?)$", re.M)


def version() -> str:
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(module: bytes) -> bytes:
    """A tar of `plugin.wasm` alone, the same bytes for the same module."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(module), 0o644, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def build(module: bytes, out: Path, tag: str) -> dict:
    """Writes an OCI image layout to `out` (replacing it); returns its digests."""
    tar = layer_tar(module)
    layer = gzip.compress(tar, compresslevel=9, mtime=0)
    config = _json({
        # GOOS/GOARCH names for WASI preview 1, as the OCI spec asks; Istio ignores them.
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(tar)}"]},
    })
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{sha256(config)}", "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": f"sha256:{sha256(layer)}", "size": len(layer)}],
        "annotations": {
            VARIANT: "compat",
            "org.opencontainers.image.title": "matomo-proxy-wasm",
            "org.opencontainers.image.version": tag,
        },
    })
    if out.exists():
        shutil.rmtree(out)
    blobs = out / "blobs/sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / sha256(blob)).write_bytes(blob)
    (out / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST, "digest": f"sha256:{sha256(manifest)}",
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return {"manifest_digest": sha256(manifest), "module_sha256": sha256(module), "tag": tag}


def update_manifests(directory: Path, digest: str) -> list[Path]:
    """Sets `sha256:` of every WasmPlugin under `directory` to the image's manifest digest."""
    changed = []
    for path in sorted(directory.glob("*.yaml")):
        text = path.read_text()
        if "kind: WasmPlugin" not in text:
            continue
        new = SHA_LINE.sub(lambda m: f"{m.group(1)}{digest}{m.group(2)}", text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["build"])
    p.add_argument("--wasm", type=Path, default=WASM)
    p.add_argument("--out", type=Path, default=ROOT / "build")
    p.add_argument("--update-manifests", type=Path, metavar="DIR")
    args = p.parse_args()
    module = args.wasm.read_bytes()
    args.out.mkdir(parents=True, exist_ok=True)
    # The module and its checksum, for `url: https://…` WasmPlugins and plain Envoy.
    (args.out / "matomo_proxy_wasm.wasm").write_bytes(module)
    (args.out / "matomo_proxy_wasm.wasm.sha256").write_text(f"{sha256(module)}  matomo_proxy_wasm.wasm\n")
    image = build(module, args.out / "oci", version())
    (args.out / "oci.digest").write_text(f"sha256:{image['manifest_digest']}\n")
    print(f"module  sha256:{image['module_sha256']}  {args.out}/matomo_proxy_wasm.wasm")
    print(f"image   sha256:{image['manifest_digest']}  oci:{args.out}/oci:{image['tag']}")
    if args.update_manifests:
        for path in update_manifests(args.update_manifests, image["manifest_digest"]):
            print(f"updated sha256 in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
