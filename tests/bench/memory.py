"""`make bench` (memory part): what the filter adds to a sidecar's memory.

Envoy's RSS idle (2 s after it is ready) and after 100,000 browser-shaped requests (run.HEADERS,
the filter tracking every one, its hits delivered to the native stand-in), at 1 and 4 workers,
for no filter, the empty filter (peers/noop), the shape's floor (peers/floor: only the crates the
filter must be built from, each used once, at opt-level "z") and this one; then the empty filter
and this one again with Envoy's `memory_allocator_manager` releasing free memory. Last, Envoy's
own allocator figures (`/memory`: what is in use against what tcmalloc holds), which say where
the difference lives.

    python -m tests.bench.memory [--requests 100000] [--workers 1,4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.bench.run import (BENCH, FLOOR_WASM, HEADERS, NOOP_WASM, PATH, RESULTS, STANDIN, StandIn,
                             envoy_config, filter_config, machine)
from tests.support.envoy import WASM, Envoy, free_port, wasm_filter

EMPTY = [wasm_filter("", wasm=NOOP_WASM)]
FILTER = [wasm_filter(filter_config())]
# Envoy's bootstrap option that has tcmalloc hand free memory back to the system (off by default):
# what V8 used to compile a module at start is freed, but otherwise kept for the process's life.
RELEASE = {"memory_allocator_manager": {"bytes_to_release": 16 * 2**20, "memory_release_interval": "1s"}}
# name: (HTTP filters, bootstrap additions)
VARIANTS: dict[str, tuple[list, dict]] = {
    "none": ([], {}),
    "empty filter": (EMPTY, {}),
    "shape's floor": ([wasm_filter(filter_config(ignored_patterns=["^/health"]), wasm=FLOOR_WASM)], {}),
    "this filter": (FILTER, {}),
    "empty filter, released": (EMPTY, RELEASE),
    "this filter, released": (FILTER, RELEASE),
}
MIB = 2**20


def load(port: int, requests: int, standin: StandIn) -> None:
    """Exactly `requests` requests over 16 connections: count.lua stops each wrk thread after
    its share, and wrk, which always waits out its -d, is stopped once the app has served them."""
    args = ["wrk", "-t2", "-c16", "-d600s", "--timeout", "5s", "-s", str(BENCH / "count.lua")]
    for h in HEADERS:
        args += ["-H", h]
    with subprocess.Popen([*args, f"http://127.0.0.1:{port}{PATH}", "--", str(requests // 2)],
                          stdout=subprocess.DEVNULL) as wrk:
        deadline = time.monotonic() + 600
        while standin.stats()["served"] < requests and time.monotonic() < deadline and wrk.poll() is None:
            time.sleep(0.2)
        wrk.terminate()


def measure(filters: list, bootstrap: dict, workers: int, requests: int, standin: StandIn) -> dict:
    port, admin = free_port(), free_port()
    standin.reset()
    envoy = Envoy({**envoy_config(filters, port, admin, standin), **bootstrap}, concurrency=workers,
                  log_level="warning")
    envoy.start()
    try:
        time.sleep(2)
        idle = envoy.rss_bytes()
        load(port, requests, standin)
        # This filter's hits delivered (or 10 s), so its queue is empty again.
        deadline = time.monotonic() + 10
        while str(WASM) in json.dumps(filters) and time.monotonic() < deadline:
            if standin.stats()["hits"] >= requests:
                break
            time.sleep(0.2)
        time.sleep(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/memory", timeout=5) as r:
            heap = json.loads(r.read())
        return {"idle": idle, "loaded": envoy.rss_bytes(), "served": standin.stats()["served"],
                "allocated": int(heap["allocated"]), "heap": int(heap["heap_size"]),
                "free": int(heap["pageheap_free"]) + int(heap["total_thread_cache"])}
    finally:
        envoy.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "memory"))
    args = ap.parse_args()
    for need in (NOOP_WASM, FLOOR_WASM, STANDIN, WASM):
        if not need.exists():
            sys.exit(f"missing {need}: run `make bench` (it builds the module and the peers)")
    standin = StandIn()
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            for r in range(args.rounds):
                names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                for name in names:
                    res = measure(*VARIANTS[name], workers, args.requests, standin)
                    runs.setdefault((workers, name), []).append(res)
                    print(f"{workers} worker(s) {name:23} idle {res['idle'] / MIB:6.1f} MiB, after "
                          f"{res['served']:,} requests {res['loaded'] / MIB:6.1f} MiB", flush=True)
    finally:
        standin.stop()

    def med(workers: int, name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(workers, name)]) / MIB

    rows = ["| workers | variant | RSS idle | over the empty filter | RSS after requests | over the empty filter |",
            "|---|---|---|---|---|---|"]
    for workers, name in runs:
        # Each variant against the empty filter in the same Envoy set-up.
        empty = "empty filter, released" if name.endswith(", released") else "empty filter"
        over = {k: med(workers, name, k) - med(workers, empty, k) for k in ("idle", "loaded")}
        rows.append(f"| {workers} | {name} | {med(workers, name, 'idle'):.1f} MiB | "
                    f"{over['idle']:+.1f} MiB | {med(workers, name, 'loaded'):.1f} MiB | "
                    f"{over['loaded']:+.1f} MiB |")
    heap = ["| workers | variant | tcmalloc in use | heap | held free (page heap + thread caches) |",
            "|---|---|---|---|---|"]
    for workers, name in runs:
        if name != "none":
            heap.append(f"| {workers} | {name} | {med(workers, name, 'allocated'):.1f} MiB | "
                        f"{med(workers, name, 'heap'):.1f} MiB | {med(workers, name, 'free'):.1f} MiB |")
    info = machine()
    report = [
        f"{info['date']} · Envoy {info['envoy']} · module {info['wasm_bytes']:,} bytes · "
        f"{args.requests:,} browser-shaped requests · medians of {args.rounds} rounds",
        "", *rows, "", "Envoy's allocator after the requests (`/memory`):", "", *heap,
    ]
    print("\n" + "\n".join(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
