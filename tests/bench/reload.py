"""`make bench-reload`: how long a new plugin configuration takes to track, and what it costs Envoy.

Envoy runs from the shipped xDS files (envoy/xds, on loopback as tests/support/shipped.py makes
them) in front of the demo app, the filter sending to the recording stand-in. Two clients send
a request every 10 ms each, every path numbered: one opens a new connection per request, the
other keeps one connection. Each round moves a new lds.yaml into place (as an operator or a
ConfigMap does) with a new `id_site`, and measures:

- applied: from the move to Envoy's `listener_manager.lds.update_success` (the main thread has
  built the new listener, and with it the plugin),
- tracking: from the move to the first request, by the time it was sent, whose hit carries the
  new id_site, for each client (a new connection goes to the new filter chain; a kept one stays
  on the old chain until Envoy drains it: `--drain-time-s`, here `--drain-time`),
- at Matomo: from the move to the arrival of that first hit (a flush interval later),
- Envoy's CPU time over the 2 s after the move, less that of the 2 s before (the clients' own
  load), the wasm VMs Envoy created (`wasm.envoy.wasm.runtime.v8.created`), and its RSS once the
  old chain has drained, against before.

Two kinds of change: the plugin JSON only (`vm_config` unchanged: Envoy keeps the VMs, which
get a new root context), and a new `vm_id` as well (each thread gets a new VM: a VM start). At 1
and 4 workers; medians over the rounds with their spread, in tests/bench/results/reload.md.

    python -m tests.bench.reload [--rounds 5] [--workers 1,4] [--drain-time 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.bench.run import RESULTS, machine, spread
from tests.support import envoy as E
from tests.support import shipped
from tests.support.matomo import MatomoStandIn, parse_hit
from tests.support.upstream import Upstream

TOKEN = "reload-bench-token-0123456789"
EVERY = 0.01  # seconds between a client's requests
KINDS = {"plugin JSON": False, "plugin JSON and vm_id": True}


class Clients:
    """The two clients, recording when each numbered request was sent."""

    def __init__(self, port: int):
        self.port = port
        self.sent: dict[str, float] = {}  # path -> monotonic time sent
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._new_connections, daemon=True),
                        threading.Thread(target=self._kept_connection, daemon=True)]
        for t in self.threads:
            t.start()

    def _loop(self, prefix: str, get) -> None:
        n = 0
        while not self.stop.is_set():
            path = f"/{prefix}/{n}"
            self.sent[path] = time.monotonic()
            try:
                get(path)
            except (OSError, http.client.HTTPException):
                pass  # a connection Envoy closed while draining: the next request opens another
            n += 1
            time.sleep(EVERY)

    def _new_connections(self) -> None:
        self._loop("new", lambda path: urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}{path}", timeout=5).read())

    def _kept_connection(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

        def get(path: str) -> None:
            conn.request("GET", path)
            conn.getresponse().read()
        try:
            self._loop("kept", get)
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


class Hits:
    """Hits at the stand-in as they arrive: (arrival time, idsite, path)."""

    def __init__(self, matomo: MatomoStandIn):
        self.matomo = matomo
        self.seen = 0
        self.arrived: list[tuple[float, str, str]] = []

    def poll(self) -> None:
        calls = self.matomo.calls[self.seen:]
        self.seen += len(calls)
        now = time.monotonic()
        for call in calls:
            for query in json.loads(call.body)["requests"]:
                hit = parse_hit(query)
                path = "/" + "/".join(hit["url"].split("/")[-2:])
                self.arrived.append((now, hit["idsite"], path))


def stat(envoy: E.Envoy, name: str) -> int:
    prefix, _, rest = name.rpartition(".")
    return envoy.counters(prefix + ".").get(rest, 0)


def update(envoy: E.Envoy, directory: Path, lds: dict, clients: Clients, hits: Hits, id_site: int,
           vm_id: str | None, timeout: float = 30.0) -> dict:
    """One change moved into place, and what followed."""
    listener = lds["resources"][0]
    shipped.update_plugin(listener, id_site=id_site)
    if vm_id:
        shipped.plugin_config(listener)["vm_config"]["vm_id"] = vm_id
    applied_before = stat(envoy, "listener_manager.lds.update_success")
    created_before = stat(envoy, "wasm.envoy.wasm.runtime.v8.created")
    rss_before = envoy.rss_bytes()
    cpu_before = envoy.cpu_seconds()
    time.sleep(2)
    cpu_idle = envoy.cpu_seconds() - cpu_before
    cpu_before, moved = envoy.cpu_seconds(), time.monotonic()
    shipped.write(directory / "lds.yaml", lds)
    applied = None
    first: dict[str, dict] = {}  # client -> its first hit with the change: sent and arrived, after the move
    cpu = None
    while time.monotonic() - moved < timeout and (len(first) < 2 or cpu is None):
        now = time.monotonic()
        if applied is None and stat(envoy, "listener_manager.lds.update_success") > applied_before:
            applied = now - moved
        if cpu is None and now - moved >= 2:
            cpu = envoy.cpu_seconds() - cpu_before - cpu_idle
        hits.poll()
        for arrived, site, path in hits.arrived:
            client = path.split("/")[1]
            if site == str(id_site) and client not in first:
                first[client] = {"sent": clients.sent[path] - moved, "arrived": arrived - moved}
        time.sleep(0.005)
    # The old chain drains (`--drain-time-s`), then its plugin goes away.
    deadline = time.monotonic() + timeout
    while stat(envoy, "listener_manager.total_filter_chains_draining") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    return {
        "applied_s": applied, "cpu_s": cpu,
        "new_sent_s": first.get("new", {}).get("sent"), "new_arrived_s": first.get("new", {}).get("arrived"),
        "kept_sent_s": first.get("kept", {}).get("sent"),
        "vms_created": stat(envoy, "wasm.envoy.wasm.runtime.v8.created") - created_before,
        "rss_before": rss_before, "rss_after": envoy.rss_bytes(),
    }


def run(workers: int, new_vm: bool, rounds: int, drain_time: float) -> list[dict]:
    matomo, upstream = MatomoStandIn().start(), Upstream().start()
    directory = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    port = E.free_port()
    boot, lds = shipped.xds_config(directory, listen_port=port, admin_port=E.free_port(), app_port=upstream.port,
                                   matomo_port=matomo.port)
    envoy = E.Envoy(boot, concurrency=workers, env={"MATOMO_TOKEN_AUTH": TOKEN},
                    extra_args=("--drain-time-s", f"{drain_time:g}"))
    envoy.start()
    clients, hits, results = Clients(port), Hits(matomo), []
    try:
        time.sleep(3)  # the first hits, and the VMs' first ticks
        for r in range(rounds):
            result = update(envoy, directory, lds, clients, hits, 100 + r, f"matomo-{r}" if new_vm else None)
            results.append(result)
            print(f"{workers} workers, {'new VM' if new_vm else 'plugin only'}, round {r + 1}/{rounds}: "
                  + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}),
                  flush=True)
    except Exception:
        print(envoy.log_for_humans()[-5000:], file=sys.stderr)
        raise
    finally:
        clients.close()
        envoy.stop()
        matomo.stop()
        upstream.stop()
    return results


def table(results: dict[tuple[int, str], list[dict]]) -> str:
    rows = ["| workers | change | applied (LDS) | new connections tracked with it | its first hit at Matomo "
            "| a kept connection tracked with it | Envoy CPU for the change | wasm VMs created "
            "| RSS before → after | RSS change per change |", "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(rs: list[dict], key: str) -> str:
        return spread([r[key] * 1000 if r[key] is not None else None for r in rs], "{:,.0f} ms")

    def s(rs: list[dict], key: str) -> str:
        return spread([r[key] for r in rs], "{:.2f} s")

    for (workers, kind), rs in results.items():
        rss = f"{rs[0]['rss_before'] / 2**20:.0f} → {rs[-1]['rss_after'] / 2**20:.0f} MiB"
        growth = spread([(r["rss_after"] - r["rss_before"]) / 2**20 for r in rs], "{:+.1f} MiB")
        rows.append(f"| {workers} | {kind} | {ms(rs, 'applied_s')} | {ms(rs, 'new_sent_s')} | {s(rs, 'new_arrived_s')} "
                    f"| {s(rs, 'kept_sent_s')} | {ms(rs, 'cpu_s')} | {spread([r['vms_created'] for r in rs])} "
                    f"| {rss} | {growth} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="changes per Envoy")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--drain-time", type=float, default=1.0, help="Envoy's --drain-time-s")
    ap.add_argument("--out", default=str(RESULTS / "reload"))
    args = ap.parse_args()
    if not E.WASM.exists():
        sys.exit(f"missing {E.WASM}: run `make bench-reload` (it builds the module)")
    started, info = time.monotonic(), machine()
    results = {}
    for workers in (int(w) for w in args.workers.split(",")):
        for kind, new_vm in KINDS.items():
            results[(workers, kind)] = run(workers, new_vm, args.rounds, args.drain_time)
    report = [f"{info['date']} · {info['nproc']} cores ({info['cpu']}), shared with other work · Envoy "
              f"{info['envoy']} · module {info['wasm_bytes']:,} bytes · {args.rounds} changes per row, medians "
              f"(min–max) · --drain-time-s {args.drain_time:g} · a request every {EVERY * 1000:g} ms per client",
              "", table(results), "", f"took {time.monotonic() - started:.0f} s"]
    print("\n" + "\n".join(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "results": {f"{w} workers, {k}": v for (w, k), v in results.items()}}, indent=1))
    print(f"\nwritten: {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
