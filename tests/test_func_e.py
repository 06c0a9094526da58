"""The func-e commands of docs/deployment.md, run as written: with the project's Envoy registered as
`.envoy-version`'s version in a temporary FUNC_E_HOME, `func-e use` and `func-e which` find it
without a download, and `func-e run -c envoy/envoy.yaml` (or `envoy/xds/bootstrap.yaml`) serves
requests and delivers their hits; a wrong config is refused with the filter's one line. Then what
a stop does to hits still queued: a plain Ctrl-C or SIGTERM loses them, `envoy/drain.sh` first
delivers every one.

The configs run are copies of the shipped ones with only their addresses changed
(tests/support/shipped.py): listener and admin on free ports, `app` on the demo app, and `matomo`
on the recording Matomo stand-in in plaintext instead of matomo.example.com over TLS. func-e is
found by tests/support/func_e.py; without one the tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.support import envoy as E
from tests.support import func_e, shipped

TOKEN = "func-e-token-0123456789"
# A dead proxy: any download func-e tried would fail at once (Go never proxies loopback, where the
# admin API that func-e reads on shutdown is).
NO_DOWNLOAD = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
CONFIGS = ["envoy/envoy.yaml", "envoy/xds/bootstrap.yaml"]


@pytest.fixture(scope="module")
def func_e_path() -> str:
    path = func_e.binary()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(func_e.MISSING)
        pytest.skip(func_e.MISSING)
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory, func_e_path):
    """A FUNC_E_HOME where the project's Envoy is func-e's copy of `.envoy-version`'s version."""
    home = tmp_path_factory.mktemp("func-e-home")
    func_e.register(home, E.envoy_executable())
    return home


def environment(home, **extra) -> dict[str, str]:
    """This environment for func-e, less a token or an ENVOY_VERSION of the caller's (the version
    comes from `.envoy-version`, as in docs/deployment.md)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ENVOY_VERSION", "MATOMO_TOKEN_AUTH")}
    return {**env, **NO_DOWNLOAD, "FUNC_E_HOME": str(home), **extra}


def run_func_e(func_e_path, home, *args, cwd=E.ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([func_e_path, *args], cwd=cwd, env=environment(home), capture_output=True,
                          text=True, timeout=60)


class FuncERun:
    """`MATOMO_TOKEN_AUTH=… func-e run -c <config>` from the repository root, for a shipped config on
    loopback; `plugin` changes its plugin JSON."""

    def __init__(self, config_name, func_e_path, home, tmp_path, matomo, upstream, envoys, *,
                 token=TOKEN, **plugin):
        self.port = E.free_port()
        ports = dict(listen_port=self.port, admin_port=E.free_port(), app_port=upstream.port,
                     matomo_port=matomo.port)
        if config_name == "envoy/envoy.yaml":
            config = shipped.static_config(**ports, **plugin)
        else:
            config, _ = shipped.xds_config(tmp_path, **ports, **plugin)
        self.envoy = E.Envoy(config)
        self.envoy.args = [func_e_path, "run", "-c", str(self.envoy.config_path)]
        self.envoy.env = environment(home, **({"MATOMO_TOKEN_AUTH": token} if token else {}))
        envoys.append(self.envoy)

    def start(self, wait=True) -> "FuncERun":
        self.envoy.start(wait=wait)
        return self

    def get(self, path: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"User-Agent": "func-e-test"})
        urllib.request.urlopen(req, timeout=5).read()

    def queue(self, n: int) -> None:
        """n requests, waited for until the filter counted them all as queued."""
        for i in range(n):
            self.get(f"/queued/{i}")
        deadline = time.monotonic() + 10
        while self.envoy.counters().get("requests_tracked", 0) < n:
            assert time.monotonic() < deadline, self.envoy.counters()
            time.sleep(0.05)

    def interrupt(self, sig=signal.SIGINT) -> str:
        """Stops func-e as a user does; returns its output once it has exited."""
        envoy_pid = self.envoy.pid
        assert envoy_pid != self.envoy.proc.pid, "func-e started no Envoy"
        self.envoy.proc.send_signal(sig)
        assert self.envoy.proc.wait(30) == 0, self.envoy.log()
        assert not os.path.exists(f"/proc/{envoy_pid}"), "Envoy outlived func-e"
        return self.envoy.log()


def test_use_and_which_find_the_registered_envoy_without_a_download(func_e_path, home, tmp_path):
    version = (E.ROOT / ".envoy-version").read_text()
    # `func-e use` writes its version into $PWD/.envoy-version when there is one: run it beside a
    # copy of the repository's, so that the test leaves the checkout alone.
    shutil.copy(E.ROOT / ".envoy-version", tmp_path)
    use = run_func_e(func_e_path, home, "use", version, cwd=tmp_path)
    assert use.returncode == 0, use.stdout + use.stderr
    assert f"{version} is already downloaded" in use.stdout + use.stderr
    # ... rewriting it byte for byte, so the documented command leaves a clean checkout.
    assert (tmp_path / ".envoy-version").read_bytes() == (E.ROOT / ".envoy-version").read_bytes()

    which = run_func_e(func_e_path, home, "which")
    assert which.returncode == 0, which.stdout + which.stderr
    assert which.stdout.strip() == str(home / "versions" / version / "bin/envoy")
    assert os.path.realpath(which.stdout.strip()) == os.path.realpath(E.envoy_executable())


@pytest.mark.parametrize("config", CONFIGS)
def test_func_e_run_serves_requests_and_delivers_their_hits(config, func_e_path, home, tmp_path, matomo,
                                                             upstream, envoys):
    run = FuncERun(config, func_e_path, home, tmp_path, matomo, upstream, envoys).start()
    run.get("/shop/cart?item=7")
    [hit] = matomo.wait_for_hits(1)
    assert hit["url"] == f"http://127.0.0.1:{run.port}/shop/cart?item=7"
    assert hit["ua"] == "func-e-test" and hit["cip"] == "127.0.0.1"
    assert matomo.calls[0].json()["token_auth"] == TOKEN  # from func-e's environment
    log = run.interrupt()
    version = (E.ROOT / ".envoy-version").read_text()
    assert f"starting: {home}/versions/{version}/bin/envoy -c {run.envoy.config_path}" in log
    assert "sending interrupt to envoy" in log


@pytest.mark.parametrize("token,plugin,key", [
    (None, {}, "token_auth_env"),  # MATOMO_TOKEN_AUTH forgotten
    (TOKEN, {"ignored_patterns": ["(x"]}, "ignored_patterns[0]"),
], ids=["no-token", "bad-regex"])
def test_a_wrong_config_is_refused_with_the_filters_line(token, plugin, key, func_e_path, home, tmp_path,
                                                         matomo, upstream, envoys):
    run = FuncERun("envoy/envoy.yaml", func_e_path, home, tmp_path, matomo, upstream, envoys,
                   token=token, **plugin).start(wait=False)
    assert run.envoy.wait_exit(60) != 0, "func-e must fail when Envoy refuses the config"
    lines = [line for line in run.envoy.log().splitlines() if "invalid plugin configuration" in line]
    assert len(lines) == 1, lines
    assert f"`{key}`: " in lines[0] and "[error][wasm]" in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_plain_stop_sends_the_hits_still_queued(sig, func_e_path, home, tmp_path, matomo, upstream, envoys):
    # Hits stay queued (flush_interval 600 s). func-e passes the stop to Envoy, which stops its
    # workers first (they hand their last hits to the VM that sends) and the main thread last,
    # whose VM sends for the whole Envoy: its last bulk call leaves before Envoy exits. Envoy
    # does not wait for the answer; envoy/drain.sh (below) does. Nor does it wait for a new
    # connection: the call leaves only on a keep-alive connection already open to the tracker
    # server the load balancer picks. Two full batches first (batch_size 4) open one to each of
    # the shipped cluster's two servers; the last 2 hits stay queued.
    run = FuncERun("envoy/envoy.yaml", func_e_path, home, tmp_path, matomo, upstream, envoys,
                   flush_interval=600, batch_size=4).start()
    run.queue(10)
    matomo.wait_for_hits(8)
    log = run.interrupt(sig)
    assert "finishing: sending the last" in log
    assert sorted(h["url"].rsplit("/", 1)[1] for h in matomo.wait_for_hits(10, timeout=5)) == \
        [str(i) for i in range(10)]


@pytest.mark.parametrize("config", CONFIGS)
def test_drain_sh_before_the_stop_delivers_every_queued_hit(config, func_e_path, home, tmp_path, matomo,
                                                            upstream, envoys):
    # docs/deployment.md's stop: envoy/drain.sh stops the listeners and waits until the queue has left (within
    # flush_interval), then Ctrl-C. flush_interval 10 s: the hits are still queued when it starts.
    run = FuncERun(config, func_e_path, home, tmp_path, matomo, upstream, envoys, flush_interval=10).start()
    run.queue(10)
    assert matomo.calls == []
    drain = subprocess.run([str(E.ROOT / "envoy/drain.sh"), f"127.0.0.1:{run.envoy.admin_port}"],
                           capture_output=True, text=True, timeout=60)
    assert drain.returncode == 0, drain.stdout + drain.stderr
    assert sorted(h["url"].rsplit("/", 1)[1] for h in matomo.hits) == [str(i) for i in range(10)]
    with pytest.raises(OSError):
        run.get("/after-the-drain")  # the listeners are stopped
    run.interrupt()
    time.sleep(0.5)
    assert len(matomo.hits) == 10
