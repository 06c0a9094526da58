"""`make soak`: Envoy with the filter under sustained load while Matomo answers 503 for minutes,
then recovers. Prints RSS over time and fails if it keeps growing once the queue is full.
SOAK_SECONDS (default 120) sets the outage length."""

from __future__ import annotations

import os
import sys
import time

from tests.support import envoy as E
from tests.support.matomo import Behaviour, MatomoStandIn
from tests.support.traffic import settled_counters, wait_counter
from tests.support.upstream import Upstream
from tests.test_failures import hammer


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "120"))
    matomo, upstream = MatomoStandIn().start(), Upstream().start()
    matomo.behaviour = Behaviour(status=503)
    listen, admin = E.free_port(), E.free_port()
    plugin = {"matomo_url": "http://matomo.example", "id_site": 1, "batch_size": 100, "queue_size": 10000,
              "retry_window": seconds * 2}
    cfg = E.bootstrap(listen_port=listen, admin_port=admin, upstream_port=upstream.port,
                      matomo_port=matomo.port, http_filters=[E.wasm_filter(plugin)])
    with E.Envoy(cfg, concurrency=2) as envoy:
        mib = lambda: envoy.rss_bytes() / 2**20  # noqa: E731
        hammer(listen, 2.0)
        samples = [(0.0, mib(), 0)]
        print(f"RSS at start (warm): {samples[0][1]:.1f} MiB; outage of {seconds:.0f} s at load", flush=True)
        start = time.monotonic()
        done = 0
        while time.monotonic() - start < seconds:
            done += hammer(listen, 10.0)
            c = envoy.counters()
            samples.append((time.monotonic() - start, mib(), c.get("hits_dropped", 0)))
            print(f"t={samples[-1][0]:6.1f}s RSS {samples[-1][1]:7.1f} MiB  requests {done:7d}  "
                  f"hits_dropped {samples[-1][2]:7d}  tracked {c.get('requests_tracked', 0)}", flush=True)
        matomo.behaviour = Behaviour()
        tracked = settled_counters(envoy)["requests_tracked"]
        wait_counter(envoy, "hits_sent", tracked, timeout=120)
        after = mib()
        print(f"RSS after recovery: {after:.1f} MiB; counters {settled_counters(envoy)}", flush=True)
    matomo.stop()
    upstream.stop()
    full = [s for s in samples if s[2] > 0]
    if not full:
        print("FAIL: the queue never filled (no hits_dropped)")
        return 1
    growth = samples[-1][1] - full[0][1]
    print(f"RSS growth once the queue was full: {growth:+.1f} MiB")
    if growth > 16:
        print("FAIL: RSS keeps growing during the outage")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
