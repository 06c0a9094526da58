"""The before/after table of docs/matomo.md: what Matomo reports for the shop's morning session
(tests/support/session.py, scripted) and for one visit in headless Chromium (tests/support/
browser.py), as Matomo's JavaScript tracker records it and as the filter does, this build and,
with `--before`, another one (an older build takes only the options it knows: no dimensions, no
visitor id secret). Each run tracks into new sites of the real Matomo the tests use.

    python -m tests.support.compare_reports [--before path/to/older.wasm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tests.support import browser, reports
from tests.support import envoy as E
from tests.support.edge import in_front_of, settled
from tests.support.real_matomo import RealMatomo
from tests.support.session import HOST, browse_the_shop
from tests.support.shop import Shop

ROWS = ["visits", "visitors", "actions", "bounces", "pageviews", "downloads", "events"]


def tracked(matomo, label: str, browse, wasm: Path, new: bool, tracker_site: int | None = None,
            **identity) -> reports.Reports:
    """The reports of one run of `browse(port)` through the filter `wasm` into a new site."""
    site = matomo.add_site(f"compare {label} {time.time():.0f}", [f"http://{HOST}"])
    dimensions = {"status": matomo.add_dimension(site, "HTTP status")} if new else {}
    options = {"status_dimension": dimensions["status"]} if new else {}
    if new and "token_auth" not in identity:
        options["visitor_id_secret"] = "compare-reports-secret"
    shop = Shop(tracker=(matomo.url, tracker_site) if tracker_site else None).start()
    envoys: list[E.Envoy] = []
    try:
        envoy, port = in_front_of(shop, envoys, matomo, site, wasm=wasm, **identity, **options)
        browse(port)
        settled(envoy)
    finally:
        for e in envoys:
            e.stop()
        shop.stop()
    return reports.read(matomo, site, dimensions)


def in_chromium(port: int) -> None:
    with browser.chromium(HOST, port) as driver:
        browser.browse(driver, HOST)
        time.sleep(2)  # the tracker's download hits, sent as the links are clicked


def cell(r: reports.Reports, row: str) -> str:
    if row == "error titles":
        return ", ".join(f"`{t}`" for t in r.error_titles) or "none"
    if row == "status dimension":
        status = r.dimensions.get("status")
        return ", ".join(f"{k}: {v}" for k, v in status.items()) if status else "none"
    return str(getattr(r, row))


def table(title: str, columns: dict[str, reports.Reports]) -> str:
    lines = [f"### {title}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in [*ROWS, "error titles", "status dimension"]:
        lines.append(f"| {row} | " + " | ".join(cell(r, row) for r in columns.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older build of the module to compare with")
    args = parser.parse_args()
    matomo, where = RealMatomo.locate()
    if matomo is None:
        raise SystemExit(where)
    builds = {"before": args.before} if args.before else {}
    builds["now"] = E.WASM
    token = {"token_auth": matomo.token}
    session = {}
    for name, wasm in builds.items():
        new = name == "now"
        session[f"filter {name}, no token"] = tracked(matomo, f"session {name}", browse_the_shop, wasm, new)
        session[f"filter {name}, token"] = tracked(matomo, f"session {name} token", browse_the_shop, wasm, new, **token)
    print(table("The morning session (scripted)", session), end="\n\n")
    if browser.available():
        visit = {}
        for name, wasm in builds.items():
            js = matomo.add_site(f"compare JavaScript tracker {name} {time.time():.0f}", [f"http://{HOST}"])
            proxy = tracked(matomo, f"browser {name}", in_chromium, wasm, name == "now", tracker_site=js)
            visit.setdefault("JavaScript tracker", reports.read(matomo, js))
            visit[f"filter {name}"] = proxy
        print(table("One visit in Chromium", visit))
    else:
        print(browser.MISSING)


if __name__ == "__main__":
    main()
