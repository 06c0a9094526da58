"""envoy/xds: the filter delivered by xDS from files. Envoy starts from the shipped bootstrap,
lds.yaml and cds.yaml (addresses pointed at loopback), tracks a request, then picks up a new
plugin configuration moved into place without a restart."""

from __future__ import annotations

import time
import urllib.request

from tests.support import envoy as E
from tests.support import shipped

TOKEN = "xds-token-0123456789"


class XdsEnvoy:
    """Envoy started from the shipped xDS files, pointed at loopback."""

    def __init__(self, tmp_path, matomo, upstream, envoys, **plugin_overrides):
        self.dir = tmp_path
        self.listen = E.free_port()
        boot, self.lds = shipped.xds_config(tmp_path, listen_port=self.listen, admin_port=E.free_port(),
                                            app_port=upstream.port, matomo_port=matomo.port, **plugin_overrides)
        # A short drain, so a replaced listener (and its plugin) goes away within the test.
        self.envoy = E.Envoy(boot, env={"MATOMO_TOKEN_AUTH": TOKEN}, extra_args=("--drain-time-s", "1"))
        envoys.append(self.envoy)
        self.envoy.start()

    def get(self, path: str) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.listen}{path}", timeout=5).read()

    def update(self, **changes) -> None:
        """A new plugin configuration through LDS, waited for until Envoy applied it."""
        applied = self.envoy.counters("listener_manager.lds.").get("update_success", 0)
        shipped.update_plugin(self.lds["resources"][0], **changes)
        shipped.write(self.dir / "lds.yaml", self.lds)
        deadline = time.monotonic() + 10
        while self.envoy.counters("listener_manager.lds.").get("update_success", 0) <= applied:
            assert time.monotonic() < deadline, "LDS update not applied"
            time.sleep(0.05)


def test_xds_files_deliver_the_filter_and_its_updates(tmp_path, matomo, upstream, envoys):
    xds = XdsEnvoy(tmp_path, matomo, upstream, envoys)
    xds.get("/first")
    [hit] = matomo.wait_for_hits(1)
    assert hit["idsite"] == "1" and hit["url"].endswith("/first")
    assert matomo.calls[0].json()["token_auth"] == TOKEN

    xds.update(id_site=7)  # the next requests go to site 7
    xds.get("/second")
    hits = matomo.wait_for_hits(2)
    assert [(h["idsite"], h["url"].rsplit("/", 1)[1]) for h in hits] == [("1", "first"), ("7", "second")]


def test_hits_queued_by_a_replaced_listener_are_sent_not_lost(tmp_path, matomo, upstream, envoys):
    # A long flush_interval keeps hits queued; replacing the listener must not lose them.
    xds = XdsEnvoy(tmp_path, matomo, upstream, envoys, flush_interval=600)
    for i in range(5):
        xds.get(f"/queued/{i}")
    time.sleep(0.3)
    assert matomo.hits == []
    xds.update(id_site=7)
    hits = matomo.wait_for_hits(5, timeout=20)  # sent when Envoy drops the old plugin (on_done)
    assert sorted(h["url"].rsplit("/", 1)[1] for h in hits) == [str(i) for i in range(5)]
    assert {h["idsite"] for h in hits} == {"1"}
    assert "finishing: sending the last 5 hits" in xds.envoy.log()
