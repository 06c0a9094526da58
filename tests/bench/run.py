"""`make bench`: the filter against the usual ways of tracking, in real Envoy, on loopback.

Every variant runs in its own Envoy (one worker unless said) in front of the same native
upstream, with the same native Matomo stand-in (`peers/standin`, which counts calls and hits).
Variants alternate within each round (the order rotates per round) and the table shows the
median over rounds, so the noise of a shared machine hits every variant alike.

Per run: a 1 s warm-up, a saturated run (wrk, `-c 32`), then for the main variants two paced
runs where each connection pauses 1 ms between requests (see paced.lua): a light one (`-c 1`,
one request at a time) and a moderate one (`-c 4`); then a wait until the stand-in has every hit
(or nothing more arrives), then Envoy's RSS.

    python -m tests.bench.run [--rounds 5] [--duration 4] [--only filter,noop] [--no-scaling]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.envoy import (ROOT, WASM, Envoy, bootstrap, envoy_binary, free_port, wasm_access_log,
                                 wasm_filter)

BENCH = ROOT / "tests/bench"
PEERS = ROOT / "target/bench-peers"
NOOP_WASM = PEERS / "wasm32-wasip1/release/bench_noop.wasm"
FLOOR_WASM = PEERS / "wasm32-wasip1/release/bench_floor.wasm"
PER_REQUEST_WASM = PEERS / "wasm32-wasip1/release/bench_per_request.wasm"
SPIN_WASM = PEERS / "wasm32-wasip1/release/bench_spin.wasm"
STANDIN = PEERS / "release/bench-standin"
RESULTS = BENCH / "results"

PATH = "/api/v1/products/12345?color=blue&size=M"
# What a desktop Chrome sends for a page (Chrome 131's set, in its order), with a 1.5 KB cookie
# of the usual kinds (consent, session, analytics, A/B), so header reads are priced on real sizes.
COOKIE = "; ".join([
    "cookieconsent_status=dismiss", "session=" + "Fe26.2**" + "a1b2c3d4e5f6" * 40,
    "_ga=GA1.1.1234567890.1733000000", "_ga_ABCDEF1234=GS1.1.1733000000.5.1.1733000500.0.0.0",
    "ab_test=variant-b", "cart_id=" + "9f86d081884c7d659a2feaa0c55ad015" * 12,
])[:1536]
HEADERS = [
    'sec-ch-ua: "Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile: ?0",
    'sec-ch-ua-platform: "Windows"',
    "Upgrade-Insecure-Requests: 1",
    "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-User: ?1",
    "Sec-Fetch-Dest: document",
    "Referer: https://shop.example.com/catalog?page=2",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8",
    "Priority: u=0, i",
    f"Cookie: {COOKIE}",
]
SAT_CONNECTIONS = 32
LIGHT_CONNECTIONS = 1
MODERATE_CONNECTIONS = 4


def filter_config(**extra) -> dict:
    return {"matomo_url": "http://matomo/matomo.php", "id_site": 1, **extra}


def lua_filter() -> dict:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": (BENCH / "track.lua").read_text()},
        },
    }


# name -> (http filters, workers, paced runs (c=1 and c=4)?, what it is)
def variants() -> dict[str, tuple[list, int, bool, str]]:
    ours = lambda **kw: [wasm_filter(filter_config(**kw))]  # noqa: E731
    noop = [wasm_filter("", wasm=NOOP_WASM)]
    return {
        "none": ([], 1, True, "Envoy alone, no filter"),
        "noop": (noop, 1, True, "no-op Proxy-Wasm filter (the wasm floor)"),
        "filter": (ours(), 1, True, "this filter, defaults (batch_size 200), every request tracked"),
        "filter-ignored": (ours(ignored_routes=[PATH.split("?")[0]]), 1, True,
                           "this filter, every request matched by ignored_routes (no hit)"),
        "access-log": ([wasm_access_log(filter_config())], 1, True,
                       "this module as Envoy's wasm access logger instead of a filter, every request tracked"),
        "noop access-log": ([wasm_access_log("", wasm=NOOP_WASM)], 1, True,
                            "the no-op module as a wasm access logger (that mode's floor)"),
        "per-request-wasm": ([wasm_filter("/matomo.php", wasm=PER_REQUEST_WASM)], 1, True,
                             "peer: wasm, one dispatch_http_call per request"),
        "per-request-lua": ([lua_filter()], 1, True,
                            "peer: Lua, one httpCall (asynchronous) per request"),
    }


def profile_variants() -> dict[str, tuple[list, int, bool, str]]:
    """Ablations (`--profile`): where the filter's time goes, next to `noop` and `filter`."""
    ours = lambda **kw: [wasm_filter(filter_config(**kw))]  # noqa: E731
    return {
        "filter-no-app-headers": (ours(response_header_prefix=""), 1, False,
                                  "this filter without the response-header scan (response_header_prefix \"\")"),
        "filter-ignored-no-app-headers": (ours(response_header_prefix="", ignored_routes=[PATH.split("?")[0]]),
                                          1, False, "ignored route and no response-header scan: "
                                          "3 header reads + rules + 2 clock reads per request"),
        "spin-log-50us": ([wasm_filter("log:50", wasm=SPIN_WASM)], 1, True,
                          "probe: burns 50 µs in on_log (is on_log on the latency path?)"),
        "spin-response-50us": ([wasm_filter("response:50", wasm=SPIN_WASM)], 1, True,
                               "probe: burns 50 µs in on_http_response_headers"),
    }


def scaling_variants() -> dict[str, tuple[list, int, bool, str]]:
    ours = lambda **kw: [wasm_filter(filter_config(**kw))]  # noqa: E731
    noop = [wasm_filter("", wasm=NOOP_WASM)]
    return {
        "noop w2": (noop, 2, False, "no-op, 2 workers"),
        "filter w2": (ours(), 2, False, "this filter, 2 workers"),
        "noop w4": (noop, 4, False, "no-op, 4 workers (oversubscribed on 2 cores)"),
        "filter w4": (ours(), 4, False, "this filter, 4 workers (oversubscribed on 2 cores)"),
        "filter b1": (ours(batch_size=1), 1, False, "this filter, batch_size 1"),
        "filter b10": (ours(batch_size=10), 1, False, "this filter, batch_size 10"),
        "filter b100": (ours(batch_size=100), 1, False, "this filter, batch_size 100"),
        "filter b500": (ours(batch_size=500), 1, False, "this filter, batch_size 500"),
    }


class StandIn:
    def __init__(self):
        self.upstream_port, self.matomo_port = free_port(), free_port()
        self.proc = subprocess.Popen([str(STANDIN), str(self.upstream_port), str(self.matomo_port)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bench-standin did not start")

    def _call(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.matomo_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._call("/__stats")

    def reset(self) -> None:
        self._call("/__reset", "POST")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(port: int, duration: float, connections: int, script: Path | None = None,
        script_args: tuple[str, ...] = ()) -> dict:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s"]
    for h in HEADERS:
        args += ["-H", h]
    if script:
        args += ["-s", str(script)]
    # wrk hands what follows `--` to the script's init().
    tail = ["--", *script_args] if script_args else []
    out = subprocess.run([*args, f"http://127.0.0.1:{port}{PATH}", *tail], capture_output=True,
                         text=True, timeout=duration + 30).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not (rps and total and "50" in lat and "99" in lat):
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "p50": seconds(lat["50"]),
        "p99": seconds(lat["99"]),
        "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


def envoy_config(filters: list[dict], port: int, admin: int, standin: StandIn) -> dict:
    """The bootstrap for a variant: its HTTP filters, and its access loggers on the HCM."""
    loggers = [f for f in filters if f["name"].startswith("envoy.access_loggers.")]
    return bootstrap(listen_port=port, admin_port=admin, upstream_port=standin.upstream_port,
                     matomo_port=standin.matomo_port,
                     http_filters=[f for f in filters if f not in loggers], access_log=loggers)


def run_variant(name: str, spec, standin: StandIn, duration: float) -> dict:
    filters, workers, moderate, _ = spec
    port, admin = free_port(), free_port()
    config = envoy_config(filters, port, admin, standin)
    standin.reset()
    envoy = Envoy(config, concurrency=workers, log_level="warning")
    envoy.start()
    try:
        wrk(port, 1, SAT_CONNECTIONS)  # warm-up: connections, VM, JIT
        result = {"variant": name, "workers": workers}
        cpu = envoy.cpu_seconds()
        sat = wrk(port, duration, SAT_CONNECTIONS)
        # Envoy's CPU per request served: what a request costs the proxy, whatever wrk got.
        sat["cpu_us"] = (envoy.cpu_seconds() - cpu) / max(sat["requests"], 1) * 1e6
        result.update({f"sat_{k}": v for k, v in sat.items()})
        if moderate:
            for key, connections in (("light", LIGHT_CONNECTIONS), ("mod", MODERATE_CONNECTIONS)):
                paced = wrk(port, duration, connections, BENCH / "paced.lua")
                result.update({f"{key}_{k}": v for k, v in paced.items()})
        # Wait for the last hits: until the stand-in has one per request served, or nothing
        # more has arrived for 2 s (flush_interval is 1 s).
        last, still_since, deadline = None, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            s = standin.stats()
            if s["hits"] >= s["served"]:
                break
            if s["hits"] != last:
                last, still_since = s["hits"], time.monotonic()
            elif time.monotonic() - still_since > 2.0:
                break
            time.sleep(0.2)
        s = standin.stats()
        result.update({"served": s["served"], "hits": s["hits"], "calls": s["calls"], "bytes": s["bytes"],
                       "rss": envoy.rss_bytes()})
        if filters and "matomo" in json.dumps(filters) and "bench_" not in json.dumps(filters):
            result["counters"] = envoy.counters()
        return result
    finally:
        envoy.stop()


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """The median, and the range (min–max) when the rounds differ; – when there is nothing."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = fmt.format(statistics.median(values))
    if min(values) == max(values):
        return med
    return f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def summarize(runs: list[dict]) -> dict:
    keys = sorted({k for r in runs for k in r if isinstance(r[k], (int, float))})
    out = {k: median(runs, k) for k in keys}
    out["variant"], out["rounds"] = runs[0]["variant"], len(runs)
    return out


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), "?")
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+/([\d.]+)", version)
    # `make bench-instructions` does not need wrk.
    wrk_v = (subprocess.run(["wrk", "-v"], capture_output=True, text=True) if shutil.which("wrk")
             else subprocess.CompletedProcess([], 0, "wrk not installed", ""))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
        "envoy": m.group(1) if m else version.strip(),
        "wrk": (wrk_v.stdout + wrk_v.stderr).split("\n")[0].strip(),
        "wasm_bytes": WASM.stat().st_size,
    }


def fmt_us(s):
    return "–" if s is None else f"{s * 1e6:,.0f} µs"


def errors(s: dict) -> float:
    return s["sat_errors"] + s.get("light_errors", 0) + s.get("mod_errors", 0)


def table(summary: dict[str, dict], descriptions: dict[str, str]) -> str:
    noop = summary.get("noop", {})
    rows = ["| variant | workers | req/s (c=32) | × no-op | p50 / p99 (c=32) | p50 / p99 (c=1, 1 ms pause) "
            "| p50 / p99 (c=4, 1 ms pause) | Δp99 vs no-op (c=1 / c=4) | Envoy CPU / request "
            "| Matomo calls / 1000 hits | hits delivered / requests | Envoy RSS | failed responses |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def paced(s: dict, key: str) -> str:
        return (f"{fmt_us(s.get(f'{key}_p50'))} / {fmt_us(s.get(f'{key}_p99'))}"
                if s.get(f"{key}_p99") is not None else "–")

    def added_p99(s: dict, key: str) -> str:
        if s.get(f"{key}_p99") is None or not noop.get(f"{key}_p99"):
            return "–"
        return f"{(s[f'{key}_p99'] - noop[f'{key}_p99']) * 1e6:+,.0f} µs"

    for name, s in summary.items():
        ref = summary.get(f"noop w{s['workers']}", noop) if s["workers"] > 1 else noop
        ratio = f"{s['sat_rps'] / ref['sat_rps']:.2f}" if ref.get("sat_rps") else "–"
        calls = f"{s['calls'] * 1000 / s['hits']:.1f}" if s.get("hits") else "–"
        cpu = f"{s['sat_cpu_us']:.0f} µs" if s.get("sat_cpu_us") else "–"
        delivered = f"{s['hits']:,.0f} / {s['served']:,.0f}" if s.get("calls") else "–"
        rows.append(f"| {name} | {s['workers']:.0f} | {s['sat_rps']:,.0f} | {ratio} | "
                    f"{fmt_us(s['sat_p50'])} / {fmt_us(s['sat_p99'])} | {paced(s, 'light')} | {paced(s, 'mod')} | "
                    f"{added_p99(s, 'light')} / {added_p99(s, 'mod')} | {cpu} | {calls} | {delivered} | "
                    f"{s['rss'] / 2**20:.0f} MiB | {errors(s):,.0f} |")
    rows.append("")
    rows += [f"- **{n}**: {d}" for n, d in descriptions.items() if n in summary]
    return "\n".join(rows)


def targets(summary: dict[str, dict]) -> list[tuple[str, bool, str]]:
    out = []
    f, noop = summary.get("filter"), summary.get("noop")
    if f and noop:
        r = f["sat_rps"] / noop["sat_rps"]
        all_in = f["hits"] >= f["served"]
        out.append(("throughput ≥ 0.9 × no-op floor, every hit delivered", r >= 0.9 and all_in,
                    f"{r:.2f} ×, {f['hits']:,.0f} of {f['served']:,.0f} hits delivered"))
        for peer in ("per-request-wasm", "per-request-lua"):
            if peer in summary:
                r = f["sat_rps"] / summary[peer]["sat_rps"]
                out.append((f"≥ 4 × {peer} throughput", r >= 4, f"{r:.2f} ×"))
        if f.get("hits"):
            c = f["calls"] * 1000 / f["hits"]
            out.append(("≤ 10 Matomo calls per 1000 hits", c <= 10, f"{c:.2f}"))
        for key, load in (("light", "light load (c=1)"), ("mod", "moderate load (c=4)")):
            if f.get(f"{key}_p99") is not None and noop.get(f"{key}_p99") is not None:
                d = (f[f"{key}_p99"] - noop[f"{key}_p99"]) * 1e6
                out.append((f"added p99 over no-op < 100 µs at {load}", d < 100, f"{d:+.0f} µs"))
    a = summary.get("access-log")
    if a and noop:
        r = a["sat_rps"] / noop["sat_rps"]
        out.append(("as an access logger: ≥ 0.9 × no-op filter floor, every hit delivered",
                    r >= 0.9 and a["hits"] >= a["served"],
                    f"{r:.2f} ×, {a['hits']:,.0f} of {a['served']:,.0f} hits delivered"))
    size = WASM.stat().st_size
    out.append(("release .wasm ≤ 200 KB", size <= 200_000, f"{size:,} bytes"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--profile", action="store_true", help="add the ablation variants")
    ap.add_argument("--out", default=str(RESULTS / "latest"))
    args = ap.parse_args()
    for need in (NOOP_WASM, PER_REQUEST_WASM, STANDIN, WASM):
        if not need.exists():
            sys.exit(f"missing {need}: run `make bench` (it builds the module and the peers)")
    if not shutil.which("wrk"):
        sys.exit("wrk missing: apt-get install wrk")
    all_variants = variants()
    if not args.no_scaling:
        all_variants.update(scaling_variants())
    if args.profile:
        all_variants.update(profile_variants())
    if args.only:
        all_variants = {k: v for k, v in all_variants.items() if k in args.only.split(",")}
    names = list(all_variants)
    standin = StandIn()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    started = time.monotonic()
    try:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            if r % 2:
                order.reverse()
            for name in order:
                res = run_variant(name, all_variants[name], standin, args.duration)
                runs[name].append(res)
                mod = (f", c=1 / c=4 p99 {fmt_us(res.get('light_p99'))} / {fmt_us(res.get('mod_p99'))}"
                       if "mod_p99" in res else "")
                print(f"round {r + 1}/{args.rounds} {name:18} {res['sat_rps']:>9,.0f} req/s, "
                      f"p99 {fmt_us(res['sat_p99'])}{mod}, hits {res['hits']}/{res['served']}, "
                      f"calls {res['calls']}, rss {res['rss'] / 2**20:.0f} MiB, "
                      f"failed {errors(res)}"
                      f"{' ' + json.dumps({k: v for k, v in res['counters'].items() if v}) if res.get('counters') else ''}", flush=True)
    finally:
        standin.stop()
    summary = {n: summarize(runs[n]) for n in names}
    descriptions = {n: v[3] for n, v in all_variants.items()}
    info = machine()
    text = table(summary, descriptions)
    checks = targets(summary)
    report = [
        f"{info['date']} · {info['nproc']} cores ({info['cpu']}), {info['mem']} RAM, Linux "
        f"{info['kernel']} · Envoy {info['envoy']} · {info['wrk']} · module {info['wasm_bytes']:,} bytes",
        f"medians of {args.rounds} rounds, {args.duration:g} s per wrk run, "
        f"took {time.monotonic() - started:.0f} s",
        "", text, "", "Targets:",
        *[f"- [{'x' if ok else ' '}] {what}: {got}" for what, ok, got in checks],
    ]
    print("\n" + "\n".join(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "summary": summary,
                                                    "runs": runs}, indent=1))
    print(f"\nwritten: {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
