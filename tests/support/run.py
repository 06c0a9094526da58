"""`make run`: Envoy on localhost:10000 with the filter, in front of the demo app.

Hits go to a local Matomo stand-in that prints each one, or, with MATOMO_URL and ID_SITE (and
optionally TOKEN_AUTH) set, to that real Matomo, through a cluster built from its URL (TLS for
https). Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from tests.support import envoy as E
from tests.support.matomo import MatomoStandIn
from tests.support.upstream import Upstream

LISTEN_PORT = int(os.environ.get("PORT", "10000"))
ADMIN_PORT = int(os.environ.get("ADMIN_PORT", "9901"))


def main() -> None:
    # A plain `kill` (or `timeout`) stops Envoy and the helpers too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    upstream = Upstream().start()
    matomo_url = os.environ.get("MATOMO_URL")
    plugin = {"flush_interval": 1}
    if matomo_url:
        plugin.update(matomo_url=matomo_url, id_site=os.environ.get("ID_SITE", "1"))
        if os.environ.get("TOKEN_AUTH"):
            plugin["token_auth"] = os.environ["TOKEN_AUTH"]
        stand_in = None
        matomo = {"matomo_port": None, "matomo_cluster_config": E.cluster_for_url(matomo_url)}
    else:
        stand_in = MatomoStandIn(echo=True).start()
        plugin.update(matomo_url="http://matomo.local/", id_site=1)
        matomo = {"matomo_port": stand_in.port}
    config = E.bootstrap(listen_port=LISTEN_PORT, admin_port=ADMIN_PORT, upstream_port=upstream.port,
                         http_filters=[E.wasm_filter(plugin)], **matomo)
    envoy = E.Envoy(config, concurrency=2)
    envoy.start()
    target = matomo_url or f"the local Matomo stand-in (127.0.0.1:{stand_in.port}), which prints each hit"
    shown = {k: ("<set>" if k == "token_auth" else v) for k, v in plugin.items()}
    print(f"""
Envoy is up with the Matomo filter ({" ".join(envoy.args[:-len(envoy.envoy_args)])}).
  try:   curl -A demo http://localhost:{LISTEN_PORT}/hello?q=1
         curl http://localhost:{LISTEN_PORT}/status/404
  stats: curl -s http://localhost:{ADMIN_PORT}/stats | grep matomo
  hits go to {target}
  plugin config: {json.dumps(shown)}
  Envoy log: {envoy.log_path}
Ctrl-C to stop.""", flush=True)
    try:
        while envoy.proc.poll() is None:
            time.sleep(0.5)
        print(envoy.log()[-4000:], file=sys.stderr)
        sys.exit(f"Envoy exited with {envoy.proc.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        envoy.stop()
        upstream.stop()
        if stand_in:
            stand_in.stop()


if __name__ == "__main__":
    main()
