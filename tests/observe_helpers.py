"""Helpers for the observability tests: CLI subprocesses read live, Flower, headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import ROOT, SESSION

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MERMAID_CANDIDATES = [
    os.environ.get("RUNBOOK_MERMAID_JS", ""),
    str(ROOT / "node_modules/mermaid/dist/mermaid.min.js"),
    "/tmp/mermaid-check/node_modules/mermaid/dist/mermaid.min.js",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )


def mermaid_js() -> Path | None:
    return next((Path(p) for p in MERMAID_CANDIDATES if p and Path(p).is_file()), None)


def run_chromium(url: str, profile: Path, *extra: str, timeout: float = 60) -> str:
    """Load ``url`` in headless Chromium with a fresh profile; return what it printed."""
    browser = chromium()
    assert browser, "chromium is not installed"
    res = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


class LiveProcess:
    """A CLI subprocess whose output lines are read as they come, so tests wait on them."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runbook_celery", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.stderr_lines: list[str] = []
        self.out_reader = threading.Thread(target=self._pump, daemon=True)
        self.out_reader.start()
        self.err_reader = threading.Thread(target=self._pump_stderr, daemon=True)
        self.err_reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr_lines.extend(self.proc.stderr)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        """Block until a stdout line matches; fail if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process ended first; saw {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def finish(self, timeout: float = 30) -> tuple[int, list[str], str]:
        """Wait for exit; return the exit code, every stdout line, and stderr."""
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        self.err_reader.join(timeout)
        return code, self.seen, "".join(self.stderr_lines)

    def close(self) -> None:
        """Kill the process if it still runs and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out_reader.join(10)
        self.err_reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class FlowerProcess:
    """``runbook-celery flower`` on a free local port, with its HTTP API open to the test."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"flower-{SESSION}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runbook_celery", "flower", f"--port={self.port}"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
            start_new_session=True,
        )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def wait_until(self, check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        """Ask Flower's HTTP API until ``check`` returns something truthy (bounded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                last = check()
                if last:
                    return last
            time.sleep(0.1)  # polling an HTTP API that has no blocking call
        raise AssertionError(
            f"flower never reported {what} in {timeout}s (last answer {last!r}); "
            f"log: {self.log_path.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def flower_running(log_dir: Path) -> Iterator[FlowerProcess]:
    flower = FlowerProcess(log_dir)
    try:
        yield flower
    finally:
        flower.stop()
