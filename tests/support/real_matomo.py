"""A real Matomo for the end-to-end tests: where it comes from, its API, its database, and the
Envoy cluster that reaches its tracker.

Where it comes from (`RealMatomo.locate`):
1. `MATOMO_E2E_URL` and `MATOMO_E2E_TOKEN`: any Matomo, with a superuser's token.
2. Else the shared local instance: `setup.sh` of `$MATOMO_SHARED`, else of `../shared/matomo`
   next to this repository, else of `/work/shared/matomo` (where these machines keep it). It is
   brought up (or re-checked, 0.3 s when up) with the caller's environment, so `MATOMO_BASE`,
   `MATOMO_DB_PORT` and `MATOMO_HTTP_PORT` pick the instance and setup.sh's defaults apply
   otherwise. Only this kind can be stopped and started, and queried with SQL.
3. Else none, with one line that says how to provide one.

Each test creates its own site (`add_site`), so tests share the instance without cleaning up and
`visits(idsite)` holds exactly what the test sent.

`RealMatomo.start_queued()` brings up a second local instance with QueuedTracking on (see
`queued_settings`): the plugin covers a whole Matomo, and the other tests need their hits recorded
as they arrive, so it never runs on the instance they share.

`python3 -m tests.support.real_matomo packages` prints the Debian packages the local instance
needs (read from setup.sh), for the Makefile.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support import envoy as E

HOW_TO_PROVIDE = ("no real Matomo: set MATOMO_E2E_URL and MATOMO_E2E_TOKEN (a superuser's token), or "
                  "provide ../shared/matomo/setup.sh (MATOMO_SHARED names another directory)")


# Entries of a visit's actionDetails that are conversions, not actions of their own.
CONVERSIONS = ("goal", "ecommerceOrder", "ecommerceAbandonedCart")


class MatomoError(RuntimeError):
    """Matomo's API answered with an error."""


def shared_dir() -> Path | None:
    """The directory of the local instance's setup.sh and stop.sh, if any."""
    candidates = [os.environ.get("MATOMO_SHARED"), E.ROOT.parent / "shared/matomo", "/work/shared/matomo"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "setup.sh").is_file():
            return Path(candidate)
    return None


def setup_packages(directory: Path) -> list[str]:
    """The Debian packages setup.sh installs (its `PKGS=` line), so no list is kept twice."""
    m = re.search(r'^PKGS="([^"]*)"', (directory / "setup.sh").read_text(), re.M)
    return m.group(1).split() if m else []


def run_script(directory: Path, script: str, timeout: float = 600, settings: dict[str, str] | None = None) -> str:
    """Runs setup.sh or stop.sh with this process's environment, so MATOMO_BASE, MATOMO_DB_PORT and
    MATOMO_HTTP_PORT pass through (give all three, or setup.sh mixes the instance's directory with
    the default one's ports), `settings` taking precedence; returns its output."""
    done = subprocess.run(["bash", str(directory / script)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(settings or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def queued_settings() -> dict[str, str]:
    """setup.sh's settings for the QueuedTracking instance: `MATOMO_QT_BASE`, `MATOMO_QT_DB_PORT`
    and `MATOMO_QT_HTTP_PORT`, by default /tmp/matomo-qt on ports 3321 and 8101. Refused when they
    name the instance the other tests use (MATOMO_BASE, MATOMO_HTTP_PORT, or setup.sh's defaults)."""
    settings = {"MATOMO_BASE": os.environ.get("MATOMO_QT_BASE", "/tmp/matomo-qt"),
                "MATOMO_DB_PORT": os.environ.get("MATOMO_QT_DB_PORT", "3321"),
                "MATOMO_HTTP_PORT": os.environ.get("MATOMO_QT_HTTP_PORT", "8101"),
                "MATOMO_QUEUED_TRACKING": "1"}
    shared = {"MATOMO_BASE": os.environ.get("MATOMO_BASE", "/tmp/matomo-e2e"),
              "MATOMO_DB_PORT": os.environ.get("MATOMO_DB_PORT", "3307"),
              "MATOMO_HTTP_PORT": os.environ.get("MATOMO_HTTP_PORT", "8089")}
    same = [k for k, v in shared.items() if settings[k] == v]
    if same:
        raise RuntimeError(f"the QueuedTracking instance would share {', '.join(same)} with the instance the "
                           "other tests use: set MATOMO_QT_BASE, MATOMO_QT_DB_PORT and MATOMO_QT_HTTP_PORT apart")
    return settings


@dataclass
class Local:
    """The instance setup.sh brought up: its scripts, the settings it was run with (on top of this
    process's environment), and those it wrote to `$MATOMO_BASE/env`."""

    directory: Path
    env: dict[str, str]
    settings: dict[str, str]


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines as the shell reads them (values may be quoted)."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = " ".join(shlex.split(value))
    return env


class RealMatomo:
    """One real Matomo: `api()` for its HTTP API, `sql()` for its database (local instance only),
    `stop()`/`start()` (local only), and `envoy_options()` for a `start_envoy` whose filter
    sends there."""

    def __init__(self, url: str, token: str, local: Local | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.local = local

    # ---- where it comes from -----------------------------------------------------------------

    @classmethod
    def locate(cls) -> tuple[RealMatomo | None, str]:
        """The Matomo to test against, and where it came from (or, when there is none, why)."""
        url, token = os.environ.get("MATOMO_E2E_URL"), os.environ.get("MATOMO_E2E_TOKEN")
        if url and token:
            return cls(url, token), f"MATOMO_E2E_URL={url}"
        if url or token:
            return None, "set both MATOMO_E2E_URL and MATOMO_E2E_TOKEN, or neither"
        local = cls.start_local()
        if local is None:
            return None, HOW_TO_PROVIDE
        return local, f"{local.local.directory}/setup.sh at {local.url}"

    @classmethod
    def start_local(cls, settings: dict[str, str] | None = None) -> RealMatomo | None:
        """The local instance, brought up by setup.sh (with `settings` in its environment); None
        when there is no setup.sh."""
        directory = shared_dir()
        if directory is None:
            return None
        settings = settings or {}
        out = run_script(directory, "setup.sh", settings=settings)
        # setup.sh's last line names the env file it wrote: "... (in BASE/pids; settings in BASE/env)".
        m = re.search(r"settings in (\S+)\)", out)
        if not m:
            raise RuntimeError(f"setup.sh did not say where its settings are:\n{out}")
        env = read_env_file(Path(m.group(1)))
        return cls(env["MATOMO_URL"], env["MATOMO_TOKEN"], Local(directory, env, settings))

    @classmethod
    def start_queued(cls) -> RealMatomo | None:
        """The local QueuedTracking instance (`queued_settings`), brought up by setup.sh; None when
        there is no setup.sh."""
        return cls.start_local(queued_settings())

    def __repr__(self) -> str:
        return f"RealMatomo({self.url}{', local' if self.local else ''})"

    # ---- the HTTP API --------------------------------------------------------------------------

    def api(self, method: str, **params) -> object:
        """Calls `module=API&method=…` (POST, so the token stays out of URLs) and returns the decoded
        JSON; lists become `name[]=…`. Raises MatomoError when Matomo reports an error."""
        fields = [("module", "API"), ("method", method), ("format", "json"), ("token_auth", self.token)]
        for name, value in params.items():
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                fields.append((f"{name}[]" if isinstance(value, (list, tuple)) else name,
                               str(int(v)) if isinstance(v, bool) else str(v)))
        body = urllib.parse.urlencode(fields).encode()
        with urllib.request.urlopen(f"{self.url}/index.php", data=body, timeout=120) as r:
            text = r.read().decode()
        try:
            answer = json.loads(text)
        except ValueError:
            raise MatomoError(f"{method}: not JSON: {text[:500]}") from None
        if isinstance(answer, dict) and answer.get("result") == "error":
            raise MatomoError(f"{method}: {answer.get('message')}")
        return answer

    def add_site(self, name: str, urls: list[str]) -> int:
        """A new website in UTC; returns its idsite."""
        return int(self.api("SitesManager.addSite", siteName=name, urls=urls, timezone="UTC")["value"])

    def add_dimension(self, idsite: int, name: str, scope: str = "action") -> int:
        """A new active custom dimension (`scope`: action or visit); returns its id, the N of the
        `dimensionN` tracking parameter."""
        return int(self.api("CustomDimensions.configureNewCustomDimension", idSite=idsite, name=name,
                            scope=scope, active=1)["value"])

    def visits(self, idsite: int, period: str = "day", date: str = "today") -> list[dict]:
        """Every visit of the site in that period, as the visitor log shows it (newest first),
        with its actions in order. The default, today in the site's time zone (UTC), is every
        visit a test just made, except those made across midnight: `date="last2",
        period="range"` covers those."""
        return self.api("Live.getLastVisitsDetails", idSite=idsite, period=period, date=date,
                        filter_limit=100000)

    def actions(self, idsite: int, **period) -> list[dict]:
        """Every action (page view, event, site search, ...) of every visit of the site, oldest
        visit first. Raises MatomoError when the visitor log cut a visit short: it shows at most
        `visitor_log_maximum_actions_per_visit` (500) actions of one visit, so give each visitor
        fewer (Matomo tells visitors apart by IP, OS, browser and language, not by the whole UA)."""
        visits = list(reversed(self.visits(idsite, **period)))
        actions = [a for v in visits for a in v["actionDetails"] if a["type"] not in CONVERSIONS]
        if len(actions) != sum(int(v["actions"]) for v in visits):
            raise MatomoError(f"the visitor log shows {len(actions)} of the site's "
                              f"{sum(int(v['actions']) for v in visits)} actions")
        return actions

    # ---- the local instance only -----------------------------------------------------------------

    def require_local(self) -> Local:
        if self.local is None:
            raise RuntimeError("this needs the local instance (setup.sh), not MATOMO_E2E_URL")
        return self.local

    def sql(self, query: str) -> list[list[str]]:
        """Rows of a query on Matomo's database (`MATOMO_DB` of the env file), as strings; NULL is
        None. For what the API does not show (raw columns such as `time_server`)."""
        command = shlex.split(self.require_local().env["MATOMO_DB"])
        done = subprocess.run([*command, "--batch", "--skip-column-names", "-e", query],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise MatomoError(f"SQL failed: {query}\n{done.stderr}")
        return [[None if v == "NULL" else v for v in line.split("\t")] for line in done.stdout.splitlines()]

    def stop(self) -> None:
        """Stops the web server and the database (stop.sh); the data stays."""
        local = self.require_local()
        run_script(local.directory, "stop.sh", timeout=120, settings=local.settings)

    def start(self) -> None:
        """Starts them again (setup.sh; the token and the data are kept)."""
        local = self.require_local()
        run_script(local.directory, "setup.sh", settings=local.settings)

    @property
    def queued(self) -> bool:
        """QueuedTracking is on: hits are recorded only by `process_queue`."""
        return self.local is not None and self.local.env.get("MATOMO_QUEUED_TRACKING") == "1"

    def process_queue(self, rounds: int = 50) -> int:
        """Records what QueuedTracking has queued: runs its console command
        (`queuedtracking:process`, which handles at most 501 queued bulk calls a run) until a run
        finds nothing left; returns the requests recorded."""
        command = shlex.split(self.require_local().env["MATOMO_QT_FLUSH"])
        total = 0
        for _ in range(rounds):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            m = re.search(r"\((\d+) requests in", done.stdout)
            if done.returncode != 0 or not m:
                raise MatomoError(f"queuedtracking:process failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            if m.group(1) == "0":
                return total
            total += int(m.group(1))
        raise MatomoError(f"queuedtracking:process still found requests after {rounds} runs")

    # ---- the filter's side -------------------------------------------------------------------------

    @property
    def tracker(self) -> tuple[str, int]:
        """Host and port of the tracker."""
        parts = urllib.parse.urlsplit(self.url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    def envoy_options(self, cluster: str = "matomo") -> dict:
        """`start_envoy` keyword arguments for a `matomo` cluster that reaches this Matomo: the
        stock loopback cluster (`matomo_port`) for one on 127.0.0.1, else one built from the URL
        (DNS, TLS for https). The plugin's `matomo_url` is `self.url`."""
        host, port = self.tracker
        if host == "127.0.0.1":
            return {"matomo_port": port, "matomo_cluster": cluster}
        return {"matomo_cluster": cluster, "matomo_cluster_config": E.cluster_for_url(self.url, cluster)}


def wait_for_counters(envoy, timeout: float = 60.0, **expected: int) -> dict[str, int]:
    """Waits until each named filter counter of the Envoy (`hits_sent=10, hits_invalid=10`) has
    reached its value, then returns all counters; fails with the counters seen when time runs out.
    The counters move only once Matomo has answered, so after this the hits are in Matomo. Given a
    list of Envoys (a fleet), it waits for the sums of their counters."""
    fleet = envoy if isinstance(envoy, list) else [envoy]
    deadline = time.monotonic() + timeout
    while True:
        counters: dict[str, int] = {}
        for one in fleet:
            for name, value in one.counters().items():
                counters[name] = counters.get(name, 0) + value
        if all(counters.get(name, 0) >= n for name, n in expected.items()):
            return counters
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout}s the filter counts {counters}, expected at least {expected}")
        time.sleep(0.1)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["packages"]:
        d = shared_dir()
        print(" ".join(setup_packages(d)) if d else "")
    else:
        sys.exit("usage: python3 -m tests.support.real_matomo packages")
