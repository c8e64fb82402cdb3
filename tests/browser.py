"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for page checks.

`Browser.visit(page)` opens a local HTML file and returns what a reader's browser met there:
the pictures that did not load, the links that do not resolve, console errors, and every
request the page made. The network is closed to the browser on purpose (a proxy that does
not exist, a resolver that knows no host), and each request is recorded from Chromium's
performance log, so a page that reaches for a CDN fails the check instead of passing on a
machine that happens to be online.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

INSTALL_HINT = (
    "the report's browser test needs Debian's Chromium and its driver: "
    "`sudo apt-get install -y chromium chromium-driver` (`make test` installs them when it can)"
)
LOCAL_SCHEMES = ("file", "data", "about", "chrome", "blob")

# Lists every picture with its load state and every link with its resolved address.
PAGE_PROBE = """
return {
  images: Array.from(document.images).map(function (img) {
    return {src: img.currentSrc || img.src, loaded: img.complete && img.naturalWidth > 0};
  }),
  links: Array.from(document.querySelectorAll("a[href]")).map(function (a) { return a.href; }),
  ids: Array.from(document.querySelectorAll("[id]")).map(function (e) { return e.id; }),
  scrollWidth: document.documentElement.scrollWidth,
  text: document.body.innerText
};
"""


def find_browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver; AssertionError with the install line when absent."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, INSTALL_HINT
    return chromium, driver


@dataclass
class Visit:
    """What one page load met."""

    url: str
    text: str
    images: list[dict]
    links: list[str]
    ids: set[str]
    scroll_width_px: int
    console_errors: list[str]
    requests: list[str]
    failed_requests: list[str]
    problems: list[str] = field(default_factory=list)

    def local_links(self) -> list[Path]:
        """The files the page's file:// links point to (fragments dropped)."""
        return [
            Path(unquote(urlparse(link).path))
            for link in self.links
            if urlparse(link).scheme == "file"
        ]


class Browser:
    """One headless Chromium session; the network is unreachable from it."""

    def __init__(self, width_px: int = 1280, height_px: int = 900) -> None:
        chromium, driver_path = find_browser()
        self._profile = tempfile.mkdtemp(prefix="chromium-profile.")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--proxy-server=http://127.0.0.1:9",  # nothing listens there
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={self._profile}",
            f"--window-size={width_px},{height_px}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(
            service=Service(executable_path=driver_path), options=options
        )
        self.width_px = width_px

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self._profile, ignore_errors=True)

    def visit(self, page: Path) -> Visit:
        self.driver.get_log("performance")  # drop what earlier pages logged
        self.driver.get_log("browser")
        self.driver.get(page.resolve().as_uri())
        probe = self.driver.execute_script(PAGE_PROBE)
        # Only the requests of pages under test (a file:// document): Chromium's own start
        # page (chrome://new-tab-page...) logs requests of its own, late, into this tab.
        requests, ours, failed = [], set(), []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message["params"]
            if message["method"] == "Network.requestWillBeSent":
                if params.get("documentURL", "").startswith("file://"):
                    requests.append(params["request"]["url"])
                    ours.add(params["requestId"])
            elif message["method"] == "Network.loadingFailed" and params["requestId"] in ours:
                failed.append(
                    f"{params.get('errorText', 'failed')} (request {params['requestId']})"
                )
        console = [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE"
        ]
        return Visit(
            url=self.driver.current_url,
            text=probe["text"],
            images=probe["images"],
            links=probe["links"],
            ids=set(probe["ids"]),
            scroll_width_px=int(probe["scrollWidth"]),
            console_errors=console,
            requests=requests,
            failed_requests=failed,
        )

    def screenshot(self, target: Path) -> np.ndarray:
        """The whole current page at the window's width, as a PNG at `target`; returns it."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        height = int(metrics["cssContentSize"]["height"])
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width_px, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        data = base64.b64decode(shot["data"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@contextmanager
def browser(width_px: int = 1280) -> Iterator[Browser]:
    session = Browser(width_px)
    try:
        yield session
    finally:
        session.close()


def offline_problems(visit: Visit, root: Path) -> list[str]:
    """Everything a reader offline would trip on: pictures that did not load, links inside
    `root` that do not resolve, console errors, and any request that is not a local file."""
    problems = [
        f"picture not loaded: {image['src']}" for image in visit.images if not image["loaded"]
    ]
    root = root.resolve()
    for link in visit.links:
        parsed = urlparse(link)
        if parsed.scheme != "file":
            continue  # a citation a reader may click; never loaded by the page
        target = Path(unquote(parsed.path))
        if root not in target.parents and target != root:
            problems.append(f"link leaves the report folder: {link}")
        elif not target.exists():
            problems.append(f"link does not resolve: {link}")
        elif (
            parsed.fragment
            and target == Path(unquote(urlparse(visit.url).path))
            and parsed.fragment not in visit.ids
        ):
            problems.append(f"link to a missing anchor: {link}")
    problems += [f"console error: {message}" for message in visit.console_errors]
    problems += [
        f"request left the machine: {url}"
        for url in visit.requests
        if urlparse(url).scheme not in LOCAL_SCHEMES
    ]
    problems += [f"request failed: {error}" for error in visit.failed_requests]
    return problems
