"""A real browser on the shop: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver, with `shop.example` resolved to an Envoy on loopback. The shop's pages run Matomo's
JavaScript tracker (tests/support/shop.py), so one visit is recorded twice: by the tracker in the
browser and by the filter in Envoy. tests/test_browser.py compares the two.

Chromium's flags are those this machine's closed network needs: no background networking,
component updates, sync or QUIC, and a fresh profile.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MISSING = "no Chromium: apt-get install chromium chromium-driver (Debian)"
WAIT = 30  # seconds for the tracker's requests, on a busy machine


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def chromium(host: str, port: int):
    """A headless Chromium whose `http://<host>/` is 127.0.0.1:port."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--host-resolver-rules=MAP {host} 127.0.0.1:{port}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver, script: str, what: str) -> None:
    """Waits until the page's `script` (an expression) is true."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(f"return Boolean({script})"), what)


def tracked(driver, requests: int = 1) -> None:
    """Waits until Matomo has answered the page's tracker `requests` times (its pageview first)."""
    until(driver, f"window.matomoSent >= {requests}", f"Matomo's answer to {requests} tracker request(s)")


def browse(driver, host: str) -> None:
    """A visit as the issue tells it: the home page, two product pages, an add to cart, an old
    link (301), a page that does not exist (404), back home, the invoice (an attachment) and the
    catalogue PDF (link clicks), then away. Waits for the tracker at each page, so that no hit is
    lost to the next navigation; the downloads' hits leave as the links are clicked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    def click(selector: str) -> None:
        driver.find_element(By.CSS_SELECTOR, selector).click()

    def follow(selector: str) -> None:
        """Clicks a link to another page and waits for that page and its pageview."""
        page = driver.find_element(By.TAG_NAME, "html")
        click(selector)
        WebDriverWait(driver, WAIT).until(staleness_of(page), f"the page behind {selector}")
        tracked(driver)

    driver.get(f"http://{host}/")
    tracked(driver)
    follow('a[href="/products/1"]')
    click("#add")
    until(driver, "window.cartUpdated", "the cart API's answer")
    tracked(driver, 2)  # the pageview and the Cart event
    follow('a[href="/products/2"]')
    follow("#older")
    driver.get(f"http://{host}/nowhere")
    tracked(driver)
    follow("#back")
    click("#invoice")
    click("#catalogue")
