"""`make bench-instructions`: what one request costs Envoy, in instructions, per variant.

Wall-clock figures on a shared virtual machine move by ±16 % from round to round; instruction
counts do not. Each variant's Envoy (one worker) runs under valgrind's callgrind. After a
warm-up, the counters are zeroed, N requests go through one keep-alive connection, and the
count is dumped after a flush interval, so the last bulk call is inside the window. Envoy's
startup (V8 compiling the module) is outside it. The count covers every thread of Envoy in
user space; the kernel's share (syscalls, loopback) is not counted.

    python -m tests.bench.instructions [--only noop,filter] [-n 1000] [--abuse]
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import (HEADERS, PATH, RESULTS, SPIN_WASM, StandIn, envoy_config, filter_config, machine,
                             profile_variants,
                             variants)
from tests.support.envoy import Envoy, envoy_executable, free_port, wasm_filter
from tests.support.flood import HOSTILE_HEADERS, HOSTILE_PATH, README_RULES

MAIN = ["none", "noop", "filter", "filter-ignored", "access-log", "noop access-log",
        "per-request-wasm", "per-request-lua", "probe: 20 clock reads", "probe: 20 header-map reads",
        "probe: 20 single-header reads", "probe: 20 property reads"]


def probes() -> dict[str, tuple[list, int, bool, str]]:
    """The price of one host call: the probe module repeats it 20 times in `on_log`."""
    return {
        "probe: 20 clock reads": ([wasm_filter("clock:20", wasm=SPIN_WASM)], 1, False,
                                  "probe module, 20 × proxy_get_current_time_nanoseconds per request"),
        "probe: 20 header-map reads": ([wasm_filter("headers:20", wasm=SPIN_WASM)], 1, False,
                                       "probe module, 20 × proxy_get_header_map_pairs (request) per request"),
        "probe: 20 single-header reads": ([wasm_filter("header:20", wasm=SPIN_WASM)], 1, False,
                                          "probe module, 20 × proxy_get_header_map_value (request; the "
                                          "filter's 8 names in turn) per request"),
        "probe: 20 property reads": ([wasm_filter("property:20", wasm=SPIN_WASM)], 1, False,
                                     "probe module, 20 × proxy_get_property (source.address) per request"),
    }


def abuse_variants() -> dict[str, tuple[list, int, bool, str]]:
    """`--abuse`: the CPU attack of tests/test_abuse.py (29 KB path and User-Agent no rule
    matches), through Envoy alone, the no-op filter, and this filter with the README's rules."""
    return {
        "none": variants()["none"],
        "noop": variants()["noop"],
        "filter + README rules": ([wasm_filter(filter_config(**README_RULES))], 1, False,
                                  "this filter, README's action rules and query filter, 2 path "
                                  "patterns, 8 User-Agent patterns; every request tracked"),
        "filter": ([wasm_filter(filter_config())], 1, False, "this filter, no rules; every request tracked"),
        "filter-ignored": ([wasm_filter(filter_config(ignored_ua_patterns=["Mozilla"]))], 1, False,
                            "this filter, every request ignored by a User-Agent literal: headers read, "
                            "no hit"),
    }


def send(port: int, n: int, path: str = PATH, headers: dict | None = None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = headers or dict(h.split(": ", 1) for h in HEADERS)
    try:
        for _ in range(n):
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"request answered {resp.status}")
    finally:
        conn.close()


def per_request(spec, standin: StandIn, n: int, request: dict | None = None) -> float:
    port, admin = free_port(), free_port()
    out = Path(tempfile.mkdtemp(prefix="callgrind-"))
    envoy = Envoy(envoy_config(spec[0], port, admin, standin), concurrency=1, log_level="warning")
    envoy.args = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
                  f"--callgrind-out-file={out}/cg", envoy_executable(), *envoy.envoy_args]
    envoy.start(wait=False)
    try:
        envoy.wait_ready(timeout=600)
        send(port, 200, **(request or {}))
        time.sleep(1.5)
        subprocess.run(["callgrind_control", "--zero", str(envoy.proc.pid)], check=True, capture_output=True)
        send(port, n, **(request or {}))
        time.sleep(1.5)  # flush_interval is 1 s: the batch of these hits leaves inside the window
        subprocess.run(["callgrind_control", "--dump", str(envoy.proc.pid)], check=True, capture_output=True)
        dump = max(out.glob("cg*"), key=lambda p: p.stat().st_mtime)
        m = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
        if not m:
            raise RuntimeError(f"no summary in {dump}")
        return int(m.group(1)) / n
    except Exception:
        print(envoy.log()[-3000:], file=sys.stderr)
        raise
    finally:
        envoy.proc.terminate()
        envoy.proc.wait(120)
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("-n", type=int, default=1000, help="requests counted per variant")
    ap.add_argument("--abuse", action="store_true",
                    help="the hostile request of tests/test_abuse.py (29 KB path and User-Agent)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not shutil.which("callgrind_control"):
        sys.exit("valgrind missing: apt-get install valgrind")
    if args.abuse:
        specs, request = abuse_variants(), {"path": HOSTILE_PATH.decode(),
                                            "headers": {k.decode(): v.decode() for k, v in HOSTILE_HEADERS}}
        names, out = list(specs), args.out or str(RESULTS / "instructions-abuse.md")
    else:
        specs, request = {**variants(), **profile_variants(), **probes()}, None
        names, out = MAIN, args.out or str(RESULTS / "instructions.md")
    if args.only:
        names = args.only.split(",")
    standin = StandIn()
    counts: dict[str, float] = {}
    try:
        for name in names:
            counts[name] = per_request(specs[name], standin, args.n, request)
            print(f"{name:28} {counts[name]:>10,.0f} instructions per request", flush=True)
    finally:
        standin.stop()
    info = machine()
    rows = [f"{info['date']} · Envoy {info['envoy']} · module {info['wasm_bytes']:,} bytes · "
            f"{args.n} requests per variant under callgrind", "",
            "| variant | Envoy instructions / request | over no filter | no-op ÷ variant |",
            "|---|---|---|---|"]
    for name, count in counts.items():
        over = f"{count - counts['none']:+,.0f}" if "none" in counts else "–"
        ratio = f"{counts['noop'] / count:.2f}" if "noop" in counts else "–"
        rows.append(f"| {name} | {count:,.0f} | {over} | {ratio} |")
    rows.append("")
    rows += [f"- **{n}**: {specs[n][3]}" for n in counts]
    report = "\n".join(rows) + "\n"
    print("\n" + report)
    Path(out).write_text(report)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
