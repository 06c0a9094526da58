"""`make bench-matomo`: what a real Matomo records per second, and what one Envoy with the filter
delivers into it.

Matomo is the local ../shared/matomo instance (tests/support/real_matomo.py brings it up;
MATOMO_BASE, MATOMO_DB_PORT and MATOMO_HTTP_PORT pick which): Matomo 5.1.2 on PHP's built-in
server with 4 workers and MariaDB, on this machine, beside Envoy, wrk and this script.

Direct (no Envoy): the same page views (people opening product pages, PAGES each, with `cip`,
`cdt` and `ua`, honoured because the token comes along) sent one POST per hit, as per-request
middlewares do, and in bulk calls of 10, 100 and 200 hits, with 1, 2, 4 and 8 calls in flight.
A person's hits always go through the same sender, in order, as the filter's lanes send them.
Per run: hits recorded per second (rows of the run's site in matomo_log_link_visit_action,
counted with SQL, over the time from the first call to the last answer) and Matomo's CPU time
per 1000 hits (the php -S process group and mysqld, from /proc).

Envoy: wrk through Envoy in front of the native app (peers/standin), people told apart by
X-Forwarded-For (visitors.lua), the filter sending to that Matomo. The build before lanes
(`--old-wasm`, commit 565bfca: one call in flight per worker) and this one with concurrent_calls
1, 2, 4 and 8, at 1 and 2 workers. At full load: requests per second, hits delivered per second
while the load lasts, the deepest queue seen (the `hits_queued` gauge; for the old build, which
has none, requests tracked minus hits sent and dropped), hits dropped, how long the queue takes
to drain after the load, and Matomo's rows against the hits the filter counts as sent. Then
paced at `--rates` requests per second with one worker: delivered without loss, or not?

Every run has a site of its own. Runs alternate within a round (the order rotates) and the
tables give medians over the rounds with their spread.

    python -m tests.bench.matomo [--rounds 3] [--hits 1000] [--duration 10] [--rates 430,900]
                                 [--parts direct,full,paced] [--old-wasm PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.bench.run import RESULTS, STANDIN, StandIn, machine, spread, wrk
from tests.support.envoy import ROOT, WASM, Envoy, bootstrap, free_port, wasm_filter
from tests.support.real_matomo import HOW_TO_PROVIDE, RealMatomo, read_env_file
from tests.support.tracker_servers import PhpFrontEnd

VISITORS_LUA = ROOT / "tests/bench/visitors.lua"
OLD_WASM = ROOT / "target/bench-old/target/wasm32-wasip1/release/matomo_proxy_wasm.wasm"
# As in visitors.lua: ACTIVE people browse at a time, PAGES page views each, then the next ACTIVE.
ACTIVE, PAGES = 100, 5
UAS = [  # as in visitors.lua
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
]
BATCHES = [None, 10, 100, 200]  # None: one call per hit
IN_FLIGHT = [1, 2, 4, 8]
CONCURRENT_CALLS = [1, 2, 4, 8]
FULL_CONNECTIONS = 32
PACED_CONNECTIONS = 8
DRAIN_TIMEOUT = 180.0


# ---- Matomo ------------------------------------------------------------------------------------

class Matomo:
    """The local instance: its API and SQL, and the CPU time its processes have used. With
    `opcache`, tracking goes to a php -S of this script's own over the same tree and database,
    with PHP's opcache on (as php-fpm has it by default; the shared instance's php -S compiles
    every file of Matomo for every request)."""

    def __init__(self, real: RealMatomo, opcache: bool = False):
        self.real = real
        local = real.require_local().env
        self.base = Path(local["MATOMO_DIR"]).parent
        self.host, self.port = real.tracker
        self.server: PhpFrontEnd | None = None
        if opcache:
            self.host = "127.0.0.1"
            self.server = PhpFrontEnd(local["MATOMO_DIR"], free_port(), self.base / "php-opcache.log",
                                      php_options=("-d", "opcache.enable_cli=1")).start(timeout=30)
            self.port = self.server.port

    def stop(self) -> None:
        """Stops this script's own php -S (its session: the server and its workers)."""
        if self.server:
            self.server.stop()

    def cpu_seconds(self) -> float:
        """User and system time of the php -S process group (setsid made the server its leader;
        its workers are its children) and of mysqld, so far."""
        pids = read_env_file(self.base / "pids")
        php = self.server.proc.pid if self.server and self.server.proc else int(pids["php"])
        mariadb = int(pids["mariadb"])
        ticks = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == php or int(proc.name) == mariadb:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def new_site(self, name: str) -> int:
        return self.real.add_site(name, ["http://shop.example"])

    def recorded(self, idsite: int) -> tuple[int, int]:
        """The site's actions and visits, as rows in Matomo's log tables."""
        [[actions]] = self.real.sql(f"SELECT COUNT(*) FROM matomo_log_link_visit_action WHERE idsite = {idsite}")
        [[visits]] = self.real.sql(f"SELECT COUNT(*) FROM matomo_log_visit WHERE idsite = {idsite}")
        return int(actions), int(visits)


def hit(idsite: int, person: int) -> str:
    """One page view of `person`, as the filter encodes it (with a token: `cip`)."""
    page = random.randint(1, 100)
    return "?" + urllib.parse.urlencode({
        "idsite": idsite, "rec": 1, "apiv": 1, "rand": random.getrandbits(31),
        "url": f"http://shop.example/products/{page}", "action_name": f"/products/{page}",
        "ua": UAS[person % len(UAS)], "lang": "en-US,en;q=0.9", "pf_srv": random.randint(5, 60),
        "cdt": int(time.time()), "cip": f"10.{person >> 16 & 255}.{person >> 8 & 255}.{person & 255}",
    })


def people(hits: int) -> list[int]:
    """Whose page view each hit is, in the order visitors.lua makes them."""
    return [ACTIVE * (i // (ACTIVE * PAGES)) + i % ACTIVE for i in range(hits)]


def send(m: Matomo, token: str, idsite: int, order: list[int], batch: int | None, errors: list) -> None:
    """One sender: page views of the people in `order`, one POST per hit (`batch` None) or in bulk
    calls, one call at a time."""
    conn = http.client.HTTPConnection(m.host, m.port, timeout=300)
    size = batch or 1
    try:
        for i in range(0, len(order), size):
            hits = [hit(idsite, p) for p in order[i:i + size]]
            if batch is None:
                body = hits[0][1:] + "&send_image=0&" + urllib.parse.urlencode({"token_auth": token})
                conn.request("POST", "/matomo.php", body, {"Content-Type": "application/x-www-form-urlencoded"})
            else:
                body = json.dumps({"requests": hits, "token_auth": token})
                conn.request("POST", "/matomo.php", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status not in (200, 204) or (batch and json.loads(answer).get("tracked") != len(hits)):
                errors.append(f"{resp.status} {answer[:200]!r}")
    except (OSError, http.client.HTTPException, ValueError) as e:
        errors.append(repr(e))
    finally:
        conn.close()


def direct_run(m: Matomo, token: str, batch: int | None, in_flight: int, hits: int, name: str) -> dict:
    idsite = m.new_site(name)
    warm: list = []
    send(m, token, idsite, [10**6, 10**6 + 1], batch, warm)  # the site's first hits
    before, _ = m.recorded(idsite)
    order, errors = people(hits), []
    # A person's hits always go through the same sender, as through the filter's lanes.
    senders = [threading.Thread(target=send, args=(m, token, idsite, [p for p in order if p % in_flight == s],
                                                   batch, errors)) for s in range(in_flight)]
    cpu, started = m.cpu_seconds(), time.monotonic()
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    elapsed, cpu = time.monotonic() - started, m.cpu_seconds() - cpu
    actions, visits = m.recorded(idsite)
    recorded = actions - before
    return {"sent": hits, "recorded": recorded, "visits": visits - 2, "people": len(set(order)),
            "seconds": elapsed, "hits_per_s": recorded / elapsed, "cpu_per_1000": cpu * 1000 / max(recorded, 1),
            "errors": len(errors) + len(warm), "first_error": (errors + warm)[:1]}


# ---- Envoy in front --------------------------------------------------------------------------------

def variants(old_wasm: Path | None) -> dict[str, tuple[Path, dict, int]]:
    """name -> (module, plugin settings beyond the common ones, workers)."""
    out = {}
    for workers in (1, 2):
        if old_wasm:
            out[f"before (565bfca), {workers}w"] = (old_wasm, {}, workers)
        for calls in CONCURRENT_CALLS:
            # The native app answers text/plain, which this build tracks (as a page view) only
            # when told to; the old build tracked every request.
            out[f"concurrent_calls {calls}, {workers}w"] = (
                WASM, {"concurrent_calls": calls, "every_request_a_pageview": True}, workers)
    return out


def filter_counts(envoy: Envoy) -> dict[str, int]:
    """The filter's counters, with `made` (hits it made: the requests it saw and did not ignore;
    the old build counts a hit dropped for a full queue as not tracked), `pending` (made, but
    neither sent nor dropped yet) and `queued` (the gauge, where the build has one)."""
    c = envoy.counters()
    ignored = sum(v for k, v in c.items() if k.startswith("requests_ignored."))
    made = c.get("requests_seen", 0) - ignored
    pending = made - c.get("hits_sent", 0) - c.get("hits_dropped", 0)
    return {**c, "made": made, "pending": pending, "queued": c.get("hits_queued", pending)}


def warm_up(envoy: Envoy, port: int, n: int = 20, timeout: float = 120.0) -> None:
    """A few requests, then a wait until Matomo has them: the VMs are compiled, the start-up
    check of site and token is answered (before that this build sends nothing), and the first
    calls are made, so the measured load starts with a filter that sends."""
    for i in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/warm-up/{i}",
                                     headers={"X-Forwarded-For": f"192.0.2.{i}", "User-Agent": UAS[0]})
        urllib.request.urlopen(req, timeout=10).read()
    deadline = time.monotonic() + timeout
    while filter_counts(envoy).get("hits_sent", 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm-up's hits did not reach Matomo within {timeout:g} s: "
                               f"{filter_counts(envoy)}\n{envoy.log_for_humans()[-3000:]}")
        time.sleep(0.1)


def envoy_run(m: Matomo, standin: StandIn, spec: tuple[Path, dict, int], duration: float,
              rate: float | None, name: str) -> dict:
    wasm, extra, workers = spec
    idsite = m.new_site(name)
    plugin = {"matomo_url": f"http://{m.host}:{m.port}/matomo.php", "id_site": idsite,
              "token_auth_env": "MATOMO_TOKEN_AUTH", **extra}
    port, admin = free_port(), free_port()
    config = bootstrap(listen_port=port, admin_port=admin, upstream_port=standin.upstream_port,
                       matomo_port=m.port,
                       http_filters=[wasm_filter(plugin, wasm=wasm, vm_env={"MATOMO_TOKEN_AUTH": m.real.token})])
    envoy = Envoy(config, concurrency=workers, log_level="warning")
    envoy.start()
    try:
        warm_up(envoy, port)
        connections = PACED_CONNECTIONS if rate else FULL_CONNECTIONS
        args = (f"{rate:g}", str(connections)) if rate else ()
        load: dict = {}
        runner = threading.Thread(target=lambda: load.update(wrk(port, duration, connections, VISITORS_LUA, args)))
        first = filter_counts(envoy)
        cpu, started = m.cpu_seconds(), time.monotonic()
        runner.start()
        samples = []  # (seconds since the load started, counts)
        while runner.is_alive():
            samples.append((time.monotonic() - started, filter_counts(envoy)))
            time.sleep(0.25)
        runner.join()
        load_end, at_end = time.monotonic() - started, filter_counts(envoy)
        while True:
            counts = filter_counts(envoy)
            samples.append((time.monotonic() - started, counts))
            if counts["pending"] <= 0 or time.monotonic() - started - load_end > DRAIN_TIMEOUT:
                break
            time.sleep(0.1)
        drained = time.monotonic() - started - load_end
        cpu = m.cpu_seconds() - cpu
        actions, visits = m.recorded(idsite)
        delta = {k: counts.get(k, 0) - first.get(k, 0) for k in ("made", "hits_sent", "hits_dropped",
                                                                  "hits_retried", "hits_resent_after_timeout")}
        return {
            "workers": workers, "rps": load["rps"], "requests": load["requests"], "failed": load["errors"],
            "made": delta["made"], "sent": delta["hits_sent"],
            "delivered_per_s": (at_end.get("hits_sent", 0) - first.get("hits_sent", 0)) / load_end,
            "max_queued": max(c["queued"] for _, c in samples),
            "dropped": delta["hits_dropped"], "drain_s": drained, "drained": counts["pending"] <= 0,
            # Once the load stops, Matomo has the machine to itself: what the filter then delivers
            # is what it can push into this Matomo (when a queue was left to drain).
            "drain_per_s": (counts.get("hits_sent", 0) - at_end.get("hits_sent", 0)) / drained if drained > 1 else None,
            # Every hit the filter sent, the warm-up's too, against the site's rows.
            "sent_all": counts.get("hits_sent", 0), "recorded": actions, "visits": visits,
            "retried": delta["hits_retried"], "resent_after_timeout": delta["hits_resent_after_timeout"],
            "cpu_per_1000": cpu * 1000 / max(delta["hits_sent"], 1),
        }
    finally:
        envoy.stop()


# ---- tables ------------------------------------------------------------------------------------------

def med(runs: list[dict], key: str) -> str:
    return spread([r[key] for r in runs])


def direct_table(runs: dict[str, list[dict]]) -> str:
    rows = ["| sent as | calls in flight | hits recorded / s | Matomo CPU s / 1000 hits | recorded / sent "
            "| visits / people | failed calls |", "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        how, flight = name.rsplit(", ", 1)
        recorded = f"{sum(r['recorded'] for r in rs):,} / {sum(r['sent'] for r in rs):,}"
        visits = f"{sum(r['visits'] for r in rs):,} / {sum(r['people'] for r in rs):,}"
        rows.append(f"| {how} | {flight.split()[0]} | {med(rs, 'hits_per_s')} | "
                    f"{spread([r['cpu_per_1000'] for r in rs], '{:.2f}')} | {recorded} | {visits} | "
                    f"{sum(r['errors'] for r in rs)} |")
    return "\n".join(rows)


def envoy_table(runs: dict[str, list[dict]]) -> str:
    rows = ["| variant | workers | requests / s | hits delivered / s under load | max hits queued "
            "| hits dropped / made | drain after the load | hits delivered / s while draining "
            "| rows in Matomo / hits sent | Matomo CPU s / 1000 hits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        dropped = f"{sum(r['dropped'] for r in rs):,} / {sum(r['made'] for r in rs):,}"
        rows_sent = f"{sum(r['recorded'] for r in rs):,} / {sum(r['sent_all'] for r in rs):,}"
        drain = spread([r["drain_s"] for r in rs], "{:.1f} s") + ("" if all(r["drained"] for r in rs)
                                                                  else " (not drained)")
        rows.append(f"| {name.rsplit(',', 1)[0]} | {rs[0]['workers']} | {med(rs, 'rps')} | "
                    f"{med(rs, 'delivered_per_s')} | {med(rs, 'max_queued')} | {dropped} | {drain} | "
                    f"{med(rs, 'drain_per_s')} | {rows_sent} | {spread([r['cpu_per_1000'] for r in rs], '{:.2f}')} |")
    return "\n".join(rows)


def rounds(names: list[str], n: int, run) -> dict[str, list[dict]]:
    """Runs every name once per round, the order rotating (and reversed every other round)."""
    out: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(n):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            result = run(name, r)
            out[name].append(result)
            print(f"round {r + 1}/{n} {name:34} " + json.dumps(
                {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hits", type=int, default=1000, help="hits per direct run")
    ap.add_argument("--duration", type=float, default=10, help="seconds of wrk per Envoy run")
    ap.add_argument("--rates", default="430,900",
                    help="requests/s of the paced runs: the old build's ~430 hits/s into this Matomo, and twice that")
    ap.add_argument("--parts", default="direct,full,paced")
    ap.add_argument("--only", default="", help="comma-separated Envoy variant names (prefixes)")
    ap.add_argument("--old-wasm", default=str(OLD_WASM), help="the build before lanes ('' for none)")
    ap.add_argument("--opcache", action="store_true",
                    help="track into a php -S of its own with PHP's opcache on (same tree and database)")
    ap.add_argument("--out", default=str(RESULTS / "matomo"))
    args = ap.parse_args()
    parts = args.parts.split(",")
    real = RealMatomo.start_local()
    if real is None:
        sys.exit(HOW_TO_PROVIDE)
    m = Matomo(real, opcache=args.opcache)
    old = Path(args.old_wasm) if args.old_wasm else None
    if old and not old.exists():
        sys.exit(f"missing {old}: `make bench-matomo` builds it (commit 565bfca)")
    for need in (STANDIN, WASM):
        if not need.exists():
            sys.exit(f"missing {need}: run `make bench-matomo` (it builds the module and the stand-in)")
    started, info = time.monotonic(), machine()
    report = [f"{info['date']} · {info['nproc']} cores ({info['cpu']}), {info['mem']} RAM, shared with other work "
              f"· Envoy {info['envoy']} · module {info['wasm_bytes']:,} bytes · Matomo 5.1.2 (php -S with 4 workers, "
              f"{'opcache on' if args.opcache else 'no opcache'}, MariaDB) · medians of {args.rounds} rounds (min–max)",
              ""]
    results: dict = {"machine": info, "args": vars(args)}
    all_variants = variants(old)
    if args.only:
        all_variants = {k: v for k, v in all_variants.items() if any(k.startswith(p) for p in args.only.split(","))}
    standin = StandIn()
    try:
        if "direct" in parts:
            specs = {f"{'one POST per hit' if b is None else f'bulk, {b} hits'}, {k} in flight": (b, k)
                     for b in BATCHES for k in IN_FLIGHT}
            direct = rounds(list(specs), args.rounds, lambda name, r: direct_run(
                m, real.token, *specs[name], args.hits, f"bench direct {name} r{r}"))
            results["direct"] = direct
            report += [f"Straight to Matomo, {args.hits} page views per run ({args.hits // PAGES} people, "
                       f"{PAGES} each):", "", direct_table(direct), ""]
        if "full" in parts:
            full = rounds(list(all_variants), args.rounds, lambda name, r: envoy_run(
                m, standin, all_variants[name], args.duration, None, f"bench full {name} r{r}"))
            results["full"] = full
            report += [f"Envoy at full load (wrk, {FULL_CONNECTIONS} connections, {args.duration:g} s; people told "
                       f"apart by X-Forwarded-For, {PAGES} page views each), the filter sending into that Matomo:",
                       "", envoy_table(full), ""]
        one = {k: v for k, v in all_variants.items() if v[2] == 1}
        for rate in (float(r) for r in args.rates.split(",") if "paced" in parts):
            paced = rounds(list(one), args.rounds, lambda name, r: envoy_run(
                m, standin, one[name], args.duration, rate, f"bench paced {rate:g} {name} r{r}"))
            results[f"paced {rate:g}"] = paced
            report += [f"One worker, paced at {rate:g} requests/s ({PACED_CONNECTIONS} connections, "
                       f"{args.duration:g} s):", "", envoy_table(paced), ""]
    finally:
        standin.stop()
        m.stop()
    report.append(f"took {time.monotonic() - started:.0f} s")
    print("\n" + "\n".join(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten: {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
