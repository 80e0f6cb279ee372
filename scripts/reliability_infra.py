"""What the reliability battery runs on: private redis-servers, Celery workers, a watchdog.

Everything here is started by the battery and killed by it (whole process groups, even
after an error or a watchdog). The Redis on port 6379 is never used: every server is a
fresh ``redis-server`` on a free loopback port with its own directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

import redis

ROOT = Path(__file__).resolve().parent.parent
RESERVED_PORTS = frozenset({6379})  # the shared Redis: never ours
TLS_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


class Hung(Exception):
    """A scenario ran past its watchdog."""


@contextlib.contextmanager
def watchdog(seconds: float, label: str) -> Iterator[None]:
    """Raise Hung in the main thread after ``seconds``, even inside a blocking socket read."""

    def _fire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"{label}: still running after {seconds:.0f}s (watchdog)")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def kill_group(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (children are started in their own session)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


# ---------------------------------------------------------------------------- Redis


def redis_binary(tls: bool = False) -> str | None:
    """A redis-server on this machine (for ``tls``, one built with TLS support)."""
    found = [shutil.which("redis-server"), *TLS_CANDIDATES]
    seen: list[str] = []
    for cand in found:
        if cand and os.path.exists(cand) and cand not in seen:
            seen.append(cand)
    if not tls:
        return seen[0] if seen else None
    for cand in seen:
        # an unknown directive after tls-port makes either build exit at once; only a build
        # without TLS complains about tls-port itself
        probe = subprocess.run(
            [cand, "--tls-port", "0", "--zz-probe", "1"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if "'tls-port" not in probe.stdout + probe.stderr:
            return cand
    return None


class RedisServer:
    """A private redis-server: AOF (everysec) and noeviction, as docker-compose.yml runs it."""

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or redis_binary(tls=tls is not None)
        if self.binary is None:
            raise RuntimeError("no suitable redis-server on this machine")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def command(self) -> list[str]:
        cmd = [
            self.binary or "redis-server",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--logfile",
            str(self.workdir / "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.tls:
            cert, key = self.tls
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            cmd += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
            cmd += ["--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def admin(self) -> redis.Redis:
        kwargs: dict[str, object] = {}
        if self.tls:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls[0]), "ssl_cert_reqs": "required"}
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self, timeout: float = 20) -> float:
        """Start (or restart) the server on the same port and directory; returns seconds taken."""
        t0 = time.monotonic()
        self.starts += 1
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.admin()
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"redis-server exited: {self.log_tail()}") from None
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"redis-server not up in {timeout}s: {self.log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()
        return time.monotonic() - t0

    def kill(self, sig: int) -> None:
        """Stop the server with ``sig`` (SIGTERM: clean shutdown, SIGKILL: crash) and reap it."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)

    def url(self, db: int = 0, password: str | None = None) -> str:
        pw = self.password if password is None else password
        auth = f":{pw}@" if pw else ""
        if self.tls:
            return (
                f"rediss://{auth}127.0.0.1:{self.port}/{db}"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls[0]}"
            )
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "redis.log").read_text()[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        kill_group(self.proc)


def self_signed_cert(workdir: Path) -> tuple[Path, Path] | None:
    """A throwaway certificate for 127.0.0.1 (None without the openssl command)."""
    if shutil.which("openssl") is None:
        return None
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# ---------------------------------------------------------------------------- workers


class Worker:
    """One ``celery worker`` for our app, restartable; each start gets a fresh node name."""

    def __init__(
        self, label: str, env: Mapping[str, str], log_dir: Path, concurrency: int = 4
    ) -> None:
        self.label = label
        self.env = dict(env)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_paths: list[Path] = []

    @property
    def nodename(self) -> str:
        return f"{self.label}-{self.starts}@reliability"

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        path = self.log_dir / f"worker-{self.label}-{self.starts}.log"
        self.log_paths.append(path)
        with open(path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "runbook_celery",
                    "worker",
                    "-Q",
                    self.env["RUNBOOK_QUEUE"],
                    "-c",
                    str(self.concurrency),
                    "-n",
                    self.nodename,
                    "-E",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel=INFO",
                ],
                cwd=ROOT,
                env={**self.env, "RELIABILITY_NODE": self.nodename},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Return once the worker logged ``<node> ready.`` (it consumes from then on)."""
        assert self.proc is not None
        marker = f"{self.nodename} ready.".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.nodename} exited early: {self.log_tail()}")
            if marker in self.log_paths[-1].read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.nodename} not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_paths[-1].read_text(errors="replace")[-chars:]
        return ""

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def rss_mb(self) -> float:
        return 0.0 if self.proc is None else rss_mb(group_pids(self.proc.pid))

    def sigkill(self) -> None:
        kill_group(self.proc, signal.SIGKILL)

    def stop(self, grace: float = 15) -> None:
        """Warm shutdown, then SIGKILL whatever is left of the process group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        kill_group(self.proc)
