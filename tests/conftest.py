"""Fixtures for the real-Envoy integration tests: a recording Matomo stand-in, the demo upstream,
`start_envoy`, which starts Envoy with the filter and prints Envoy's log when a test fails, and
`real_matomo` / `local_matomo`, a real Matomo (tests/support/real_matomo.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import envoy as E
from tests.support.matomo import MatomoStandIn
from tests.support.real_matomo import RealMatomo
from tests.support.upstream import Upstream


def pytest_sessionstart(session):
    if not E.WASM.exists():
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1"], cwd=E.ROOT, check=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def matomo():
    m = MatomoStandIn().start()
    yield m
    m.stop()


def unavailable(reason: str):
    """Skips the test with one line; under CI=true, where every test must run, fails it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the real-Matomo tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_matomo():
    """A real Matomo: MATOMO_E2E_URL + MATOMO_E2E_TOKEN, else the local ../shared/matomo instance
    (brought up by its setup.sh), else the test skips saying how to provide one."""
    try:
        matomo, where = RealMatomo.locate()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"the local Matomo did not come up: {str(e).strip().splitlines()[-1]}")
    if matomo is None:
        unavailable(where)
    print(f"\nreal Matomo: {where}")
    return matomo


@pytest.fixture(scope="session")
def local_matomo(real_matomo):
    """The local instance, for tests that stop and start Matomo. With MATOMO_E2E_URL they skip,
    except under CI=true, where the local instance is brought up for them."""
    if real_matomo.local:
        return real_matomo
    if os.environ.get("CI") == "true":
        local = RealMatomo.start_local()
        if local:
            return local
    unavailable("stops and starts Matomo, which needs the local ../shared/matomo instance, not MATOMO_E2E_URL")


@pytest.fixture(scope="session")
def queued_matomo():
    """A second local Matomo with QueuedTracking on (its own directory and ports, see
    `real_matomo.queued_settings`), brought up by ../shared/matomo/setup.sh; tests read what it
    recorded after `process_queue()`. Skips without setup.sh (fails under CI=true)."""
    try:
        matomo = RealMatomo.start_queued()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"the QueuedTracking Matomo did not come up: {str(e).strip().splitlines()[-1]}")
    if matomo is None:
        unavailable("no QueuedTracking Matomo: it needs ../shared/matomo/setup.sh (MATOMO_SHARED names another "
                    "directory)")
    if not matomo.queued:
        unavailable(f"setup.sh did not turn QueuedTracking on at {matomo.url}")
    print(f"\nQueuedTracking Matomo: {matomo.url}")
    return matomo


@pytest.fixture(scope="session")
def upstream():
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture
def envoys(request):
    """A list to append Envoys started by hand to: stopped after the test, logs printed on failure."""
    started: list[E.Envoy] = []
    yield started
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for envoy in started:
        envoy.stop()
        if failed:
            print(f"\n----- Envoy log ({envoy.config_path}) -----\n{envoy.log_for_humans()}")


class Started:
    """An Envoy with the filter, plus where to reach it."""

    def __init__(self, envoy: E.Envoy, listen_port: int):
        self.envoy = envoy
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}"

    def __getattr__(self, name):
        return getattr(self.envoy, name)


@pytest.fixture
def start_envoy(request, matomo, upstream):
    """`start_envoy(plugin_config, concurrency=1, **bootstrap_or_filter_options)`: Envoy in
    front of the demo upstream, with the filter (or, with `access_log=True`, the access
    logger) sending to the `matomo` stand-in."""
    started: list[E.Envoy] = []

    def start(plugin_config, *, concurrency=1, log_level="info", root_id="matomo", vm_env=None,
              failure_policy=None, matomo_cluster="matomo", matomo_port=None, wait=True,
              extra_args=(), access_log=False, **bootstrap_extra):
        listen_port, admin_port = E.free_port(), E.free_port()
        plugin = dict(root_id=root_id, vm_env=vm_env, failure_policy=failure_policy)
        # The module as an HTTP filter, or as the HCM's access logger instead.
        module = (E.wasm_access_log if access_log else E.wasm_filter)(plugin_config, **plugin)
        config = E.bootstrap(
            listen_port=listen_port, admin_port=admin_port, upstream_port=upstream.port,
            matomo_port=matomo_port or matomo.port, matomo_cluster=matomo_cluster,
            http_filters=[] if access_log else [module], access_log=[module] if access_log else None,
            **bootstrap_extra,
        )
        envoy = E.Envoy(config, concurrency=concurrency, log_level=log_level, extra_args=extra_args)
        started.append(envoy)
        envoy.start(wait=wait)
        return Started(envoy, listen_port)

    yield start
    failed = any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    for envoy in started:
        envoy.stop()
        if failed:
            print(f"\n----- Envoy log ({envoy.config_path}) -----\n{envoy.log_for_humans()}")
