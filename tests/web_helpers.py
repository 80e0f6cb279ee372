"""Helpers for the web tests: `runbook-celery flower` with our pages, an HTTP client, Chromium.

The browser is Debian's chromium driven by Selenium through Debian's chromedriver (both
from apt; nothing is downloaded). Basic-auth credentials are sent as a header on every
request the page makes (Chrome DevTools' Network.setExtraHTTPHeaders), like a browser
that has logged in.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, SESSION
from observe_helpers import CHROMIUM_FLAGS, free_port
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

USER, PASSWORD = "alice", "s3cret-pw"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class WebFlower:
    """``runbook-celery flower`` on a free port, with our options, as a subprocess."""

    def __init__(
        self,
        log_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        prefixes = [a.split("=", 1)[1] for a in args if a.startswith("--url_prefix=")]
        self.prefix = "/" + prefixes[-1].strip("/") if prefixes else ""
        self.auth = auth
        self.log_path = log_dir / f"flower-web-{SESSION}-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "runbook_celery", "flower", f"--port={self.port}", *args]
        if auth:
            cmd.append(f"--basic-auth={auth[0]}:{auth[1]}")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**clean, **(env or {})},
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.request("GET", f"{self.prefix}/healthcheck").status == 200:
                    return
            time.sleep(0.1)  # waiting for a port to open: nothing to block on
        raise AssertionError(f"flower not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def auth_header(self) -> dict[str, str]:
        if not self.auth:
            return {}
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bytes | None = None,
        timeout: float = 30,
    ) -> Response:
        """One HTTP request; errors are returned as responses, not raised."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {**(self.auth_header() if auth else {}), **(headers or {})}
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(resp.status, _lower(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, _lower(err.headers), err.read())

    def events(self, path: str, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
        """Read an event stream to its end (``event: end``); each message as a dict."""
        req = urllib.request.Request(
            self.base + path, headers={**self.auth_header(), **(headers or {})}
        )
        out: list[dict[str, str]] = []
        with urllib.request.urlopen(req, timeout=30) as resp:
            current: dict[str, str] = {}
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in current:
                        out.append(current)
                        if current.get("event") == "end":
                            return out
                    current = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    current[key] = value
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


def _lower(headers: Any) -> dict[str, str]:
    """Header names in lower case (HTTP names are case-insensitive; tornado title-cases)."""
    return {k.lower(): v for k, v in headers.items()}


@contextlib.contextmanager
def web_flower(log_dir: Path, *args: str, **kwargs: Any) -> Iterator[WebFlower]:
    server = WebFlower(log_dir, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def chrome(profile: Path, flower: WebFlower, size: str = "1500,1000"):  # type: ignore[no-untyped-def]
    """A headless Chromium (Debian's) under Selenium, logged in to ``flower``."""
    browser = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert browser and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": flower.auth_header()})
    return driver
