"""An edge Envoy in front of the demo shop (tests/support/shop.py) with the filter tracking into a
real Matomo, and the waits that tell when Matomo has every hit: what tests/test_reports.py and
tests/test_browser.py run their sessions through."""

from __future__ import annotations

import time

from tests.support import envoy as E
from tests.support.real_matomo import wait_for_counters


def in_front_of(shop, envoys: list, matomo, site: int, trusted_hops: int = 1, wasm=E.WASM,
                **plugin) -> tuple[E.Envoy, int]:
    """An Envoy in front of the shop, trusting `trusted_hops` proxies in front of it (their
    X-Forwarded-For names the client), with the filter (`wasm`: another build) tracking into
    `site` (more plugin options in `plugin`), appended to `envoys` (the fixture that stops them
    and prints their logs when a test fails); returns it and its port."""
    port, admin = E.free_port(), E.free_port()
    config = E.bootstrap(
        listen_port=port, admin_port=admin, upstream_port=shop.port,
        http_filters=[E.wasm_filter({"matomo_url": matomo.url, "id_site": site, "flush_interval": 0.2, **plugin},
                                    wasm=wasm)],
        hcm_extra={"use_remote_address": True, "xff_num_trusted_hops": trusted_hops},
        **{"matomo_port": None, **matomo.envoy_options()})
    envoy = E.Envoy(config)
    envoys.append(envoy)
    envoy.start()
    return envoy, port


def delivered(envoy, requests: int) -> dict[str, int]:
    """Waits until the filter has seen `requests` and Matomo has answered for each hit made."""
    counters = wait_for_counters(envoy, requests_seen=requests)
    return wait_for_counters(envoy, timeout=120, hits_sent=counters["requests_tracked"])


def settled(envoy, quiet: float = 1.0) -> dict[str, int]:
    """For requests not counted by the sender (a browser's): waits until the filter has seen no new
    request for `quiet` seconds, then until Matomo has answered for each hit made."""
    seen = envoy.counters().get("requests_seen", 0)
    while True:
        time.sleep(quiet)
        now = envoy.counters().get("requests_seen", 0)
        if now == seen:
            return delivered(envoy, seen)
        seen = now
