"""Fixtures of the browser test: the stack (browser_stack.py), the client page served from an
allowed and from a refused origin (two http.server threads: different ports, different origins),
headless Chromium through selenium, tokens minted by deploy/mint-token.py, events published the
backend's way, and the artefacts of the run (screenshots, page logs, process logs) under
<cargo target dir>/browser-artifacts/<time>/, printed at the end of the run.

Run alone: PYTHONPATH=.tools/browser-py:.tools/chart-py python3 -m pytest -p no:cacheprovider deploy/tests/browser
(deploy/install-deps.sh installs chromium, chromium-driver and selenium); BROWSER_TEST_BIN_DIR=<dir>
takes the gateway and publisher-bridge binaries from <dir> instead of the cargo target directory.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

from browser_stack import BRANCH, Backend, Stack, target_directory, wait_for

PAGE_DIR = Path(__file__).resolve().parent / "page"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Shorter than the apps' 30 s so that a test sees pings; the gateways' heartbeat timeout is set
# above it and below the test's length, so a page that stopped pinging would be closed (1001).
PING_MS = 1000
HEARTBEAT_TIMEOUT = "6s"
GATEWAY_ENV = {
    "WS_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT,
    "GATEWAY_DRAIN_WINDOW": "2s",
    "GATEWAY_SHUTDOWN_TIMEOUT": "8s",
    "GATEWAY_UNSUBSCRIBE_DELAY": "2s",
}

_artifacts: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    for path in _artifacts:
        terminalreporter.write_line(f"browser test artefacts (screenshots, page and process logs): {path}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = target_directory() / "browser-artifacts" / datetime.now().strftime("%Y%m%d-%H%M%S")
    (path / "logs").mkdir(parents=True, exist_ok=True)
    _artifacts.append(path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name=f"page-{server.server_port}", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def origins():
    """The page from two origins: `allowed` (in ALLOWED_ORIGINS) and `refused`."""
    (allowed_server, allowed), (refused_server, refused) = _serve(PAGE_DIR), _serve(PAGE_DIR)
    yield {"allowed": allowed, "refused": refused}
    for server in (allowed_server, refused_server):
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(origins, artifacts):
    running = Stack(artifacts / "logs", [origins["allowed"]], GATEWAY_ENV)
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def driver(artifacts):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} missing: run deploy/install-deps.sh (Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root in a container: no sandbox; /dev/shm is small there. Without the back/forward cache:
    # Chromium 156 keeps a page that was navigated away from in it with its WebSockets open and
    # silent (the gateway ends them only at WS_HEARTBEAT_TIMEOUT), so one test's sockets would
    # still count in the next; without it, leaving the page closes them (1001) at once.
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
             "--disable-features=BackForwardCache")
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(artifacts / "logs" / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_script_timeout(15)
    browser.set_page_load_timeout(15)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The client page in the browser: load it from an origin, start clients, read their logs."""

    def __init__(self, driver, stack: Stack, artifacts: Path, test_name: str):
        self.driver, self.stack, self.artifacts, self.test_name = driver, stack, artifacts, test_name
        self.console: list[dict] = []

    def open(self, origin: str) -> None:
        self.driver.get(f"{origin}/index.html")
        wait_for("page loaded", lambda: self.driver.execute_script("return typeof window.startClient") == "function", 10)

    def start(self, name: str, token: str, **options) -> str:
        config = {"gateway": self.stack.lb, "token": token, "branchId": BRANCH, "pingMs": PING_MS, **options}
        return self.driver.execute_script("return window.startClient(arguments[0], arguments[1])", name, config)

    def snapshot(self, name: str) -> dict:
        return self.driver.execute_script("return window.clients[arguments[0]].snapshot()", name)

    def wait(self, name: str, what: str, condition, timeout: float = 20.0) -> dict:
        """Polls the client's snapshot until `condition(snapshot)`; returns that snapshot."""
        last: list[dict] = [{}]

        def check() -> bool:
            last[0] = self.snapshot(name)
            return bool(condition(last[0]))

        wait_for(f"{name}: {what}", check, timeout, interval=0.1, details=lambda: _describe(last[0]))
        return last[0]

    def catch_up(self, name: str, since: float) -> dict:
        """The client's catch-up fetch, run now; what the page recorded about it."""
        script = "const done = arguments[arguments.length - 1]; window.clients[arguments[0]].catchUp('test', arguments[1]).then(done);"
        return self.driver.execute_async_script(script, name, since)

    def close(self, name: str) -> None:
        self.driver.execute_script("window.clients[arguments[0]].close()", name)

    def console_log(self) -> list[dict]:
        """Browser console entries since the last call (kept for the artefacts too)."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def save(self, label: str = "") -> None:
        """A screenshot and everything the page recorded, as artefacts of this test."""
        stem = self.artifacts / (self.test_name + (f"-{label}" if label else ""))
        self.driver.save_screenshot(str(stem) + ".png")
        state = self.driver.execute_script(
            "return window.clients ? Object.keys(window.clients).map(n => window.clients[n].snapshot()) : []"
        )
        self.console_log()
        stem.with_suffix(".json").write_text(json.dumps({"clients": state, "console": self.console}, indent=1))


def _describe(snapshot: dict) -> str:
    if not snapshot:
        return "(no snapshot)"
    head = {k: snapshot.get(k) for k in ("state", "attempts", "opens", "pongs", "cursor")}
    entries = [e for e in snapshot["log"] if e["kind"] != "pong"][-25:]
    lines = [f"{e['kind']} {json.dumps({k: v for k, v in e.items() if k not in ('kind', 't')})}" for e in entries]
    return f"{head}, {len(snapshot['events'])} events\n" + "\n".join(lines)


@pytest.fixture
def page(driver, stack, artifacts, request):
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    browser_page = Page(driver, stack, artifacts, name)
    yield browser_page
    # Kept for failures and successes alike; then leave the page so its sockets close.
    try:
        browser_page.save()
    finally:
        driver.get("about:blank")


@pytest.fixture
def backend(stack, request):
    return Backend(stack, request.node.name)
