"""The lab of scripts/netlab.py: hosts in network namespaces on one bridge, and faults.

Topology (``TAG`` is unique per lab, ``rbnl<pid>``, so labs never collide)::

    TAG-sw  br0 ─┬─ p-redis  ── TAG-redis   eth0 10.78.0.2   redis-server :6379 (AOF)
                 ├─ p-w1     ── TAG-w1      eth0 10.78.0.11  runbook-celery worker -c 2
                 ├─ p-w2     ── TAG-w2      eth0 10.78.0.12  runbook-celery worker -c 2
                 └─ p-client ── TAG-client  eth0 10.78.0.20  submit() / trigger --wait

The bridge lives in a namespace of its own and no interface reaches the host's network
namespace, so nothing this lab does (addresses, veths, iptables rules) touches the
machine's own network, and deleting the namespaces removes all of it. Processes are
started by PID in their host's namespace and stopped by PID (their process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SUBNET = "10.78.0"
HOSTS = {
    "redis": f"{SUBNET}.2",
    "w1": f"{SUBNET}.11",
    "w2": f"{SUBNET}.12",
    "client": f"{SUBNET}.20",
}
WORKERS = ("w1", "w2")
PORT = 6379
STATE_DIR = Path("/run/runbook-netlab")  # a state file per live lab, for `netlab.py cleanup`
IMPAIR_QUEUE = "7"
SCRIPTS = Path(__file__).resolve().parent


def wait_for(cond: Callable[[], object], timeout: float, every: float = 0.2) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def netns_list() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def kill_namespace_pids(name: str) -> None:
    """SIGKILL what is left inside one of this lab's namespaces (all of it started by us)."""
    for _ in range(10):
        r = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
        )
        pids = [int(p) for p in r.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


class Lab:
    """The namespaces, the processes in them and the faults between them."""

    def __init__(self, out: Path, lease: int, log: Callable[[str], None]) -> None:
        self.tag = f"rbnl{os.getpid()}"
        self.out = out
        self.lease = lease
        self.log = log
        self.execs = out / "exec"  # the steps' own record of their executions
        self.execs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []
        self.faults: list[tuple[str, str]] = []
        self.impaired: set[str] = set()
        self.cmdlog = open(out / "commands.sh", "a")  # noqa: SIM115 - closed in down()

    # ------------------------------------------------------------------ commands

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def note(self, argv: list[str], comment: str = "") -> None:
        self.cmdlog.write(f"# {time.strftime('%H:%M:%S')} {comment}\n{shlex.join(argv)}\n")
        self.cmdlog.flush()

    def sh(self, *argv: str, check: bool = True, timeout: float = 30, quiet: bool = False):  # type: ignore[no-untyped-def]
        if not quiet:
            self.note(list(argv))
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
        return r

    def in_ns(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    # ------------------------------------------------------------------ topology

    def up(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        names = [self.ns(h) for h in ("sw", *HOSTS)]
        state = {"pid": os.getpid(), "namespaces": names}
        (STATE_DIR / f"{self.tag}.json").write_text(json.dumps(state))
        sw = self.ns("sw")
        self.sh("ip", "netns", "add", sw)
        self.namespaces.append(sw)
        self.sh("ip", "-n", sw, "link", "set", "lo", "up")
        self.sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "-n", sw, "link", "set", "br0", "up")
        for host, addr in HOSTS.items():
            n = self.ns(host)
            self.sh("ip", "netns", "add", n)
            self.namespaces.append(n)
            self.sh("ip", "-n", n, "link", "set", "lo", "up")
            port = f"p-{host}"
            self.sh(
                "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", n,
            )  # fmt: skip
            self.sh("ip", "-n", sw, "link", "set", port, "master", "br0")
            self.sh("ip", "-n", sw, "link", "set", port, "up")
            self.sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", "eth0")
            self.sh("ip", "-n", n, "link", "set", "eth0", "up")
        self.log(f"lab up: {', '.join(self.namespaces)}")

    def down(self) -> None:
        """Stop every process, delete every namespace (veths and rules go with them)."""
        with contextlib.suppress(Exception):
            self.clear_faults()
        for name in list(self.procs):
            self.stop(name, sig=signal.SIGKILL, timeout=5)
        for n in reversed(self.namespaces):
            kill_namespace_pids(n)
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
            self.note(["ip", "netns", "del", n])
        left = [n for n in self.namespaces if n in netns_list()]
        if left:
            self.log(f"WARNING: namespaces still present: {left}")
        self.namespaces.clear()
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{self.tag}.json").unlink()
        with contextlib.suppress(OSError):
            STATE_DIR.rmdir()  # only when no other lab has a state file there
        self.cmdlog.close()

    # ------------------------------------------------------------------ processes

    def env_for(self, host: str) -> dict[str, str]:
        tmp = self.out / f"tmp-{host}"
        tmp.mkdir(parents=True, exist_ok=True)
        url = f"redis://{HOSTS['redis']}:{PORT}/0"
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(tmp),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
            "RUNBOOK_REDIS_URL": url,
            "RUNBOOK_BROKER_URL": url,
            "RUNBOOK_LEASE_SECONDS": str(self.lease),
            "RUNBOOK_SHUTDOWN_GRACE": "3",
            "NETLAB_HOST": host,
            "NETLAB_EXECS": str(self.execs),
        }

    def spawn(
        self, name: str, host: str, argv: list[str], logfile: Path, env: dict[str, str] | None
    ) -> subprocess.Popen[bytes]:
        full = self.in_ns(host, *argv)
        self.note(full, f"start {name}")
        with open(logfile, "ab") as fh:
            proc = subprocess.Popen(
                full,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Signal a process we started, then SIGKILL what is left of its process group."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        self.note(["kill", f"-{signal.Signals(sig).name}", str(proc.pid)], f"stop {name}")
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return proc.returncode

    # ------------------------------------------------------------------ services

    def start_redis(self) -> None:
        data = self.out / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server", "--bind", HOSTS["redis"], "--port", str(PORT),
            "--protected-mode", "no", "--dir", str(data), "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str(data / "redis.log"),
            "--appendonly", "yes", "--appendfsync", "everysec",
        ]  # fmt: skip
        self.spawn("redis", "redis", argv, data / "redis.stdout", None)
        if not wait_for(self.redis_ping, 30, 0.2):
            raise RuntimeError("redis-server did not answer within 30 s")

    def redis_ping(self) -> bool:
        cli = ["redis-cli", "-h", HOSTS["redis"], "-p", str(PORT), "ping"]
        try:
            r = self.sh(*self.in_ns("redis", *cli), check=False, timeout=5, quiet=True)
        except subprocess.TimeoutExpired:
            return False
        return r.stdout.strip() == "PONG"

    def start_workers(self) -> None:
        for host in WORKERS:
            argv = [
                sys.executable, "-m", "runbook_celery", "worker", "--concurrency", "2",
                "-n", f"{host}@netlab",
            ]  # fmt: skip
            self.spawn(f"worker-{host}", host, argv, self.worker_log(host), self.env_for(host))

        def ready() -> bool:
            return all(" ready." in read_text(self.worker_log(h)) for h in WORKERS)

        if not wait_for(ready, 90, 0.3):
            raise RuntimeError(f"workers not ready within 90 s (see {self.out})")

    def worker_log(self, host: str) -> Path:
        return self.out / f"worker-{host}.log"

    # ------------------------------------------------------------------ faults

    def iptables(self, host: str, *rule: str) -> None:
        self.sh(*self.in_ns(host, "iptables", "-w", "5", *rule))

    def partition(self, host: str, method: str = "drop") -> None:
        """Cut ``host`` off: packets dropped silently both ways (``drop``: no RST, no FIN,
        as behind a dead switch), or its switch port down (``link``)."""
        if method == "drop":
            self.iptables(host, "-I", "INPUT", "1", "-i", "eth0", "-j", "DROP")
            for other in HOSTS:
                if other != host:
                    self.iptables(other, "-I", "INPUT", "1", "-s", HOSTS[host], "-j", "DROP")
        elif method == "link":
            self.sh("ip", "-n", self.ns("sw"), "link", "set", f"p-{host}", "down")
        elif method == "blackout":  # neither in nor out, on the host itself
            self.iptables(host, "-I", "INPUT", "1", "-i", "eth0", "-j", "DROP")
            self.iptables(host, "-I", "OUTPUT", "1", "-o", "eth0", "-j", "DROP")
        else:
            raise ValueError(method)
        self.faults.append((host, method))

    def heal(self, host: str, method: str = "drop") -> None:
        if method == "drop":
            self.iptables(host, "-D", "INPUT", "-i", "eth0", "-j", "DROP")
            for other in HOSTS:
                if other != host:
                    self.iptables(other, "-D", "INPUT", "-s", HOSTS[host], "-j", "DROP")
        elif method == "link":
            self.sh("ip", "-n", self.ns("sw"), "link", "set", f"p-{host}", "up")
        else:
            self.iptables(host, "-D", "INPUT", "-i", "eth0", "-j", "DROP")
            self.iptables(host, "-D", "OUTPUT", "-o", "eth0", "-j", "DROP")
        self.faults.remove((host, method))

    def impair(self, host: str, delay_ms: float, jitter_ms: float, loss_pct: float, seed: int):  # type: ignore[no-untyped-def]
        """Delay, jitter and loss both ways on ``host``'s link (no sch_netem needed: an
        NFQUEUE daemon, netlab_impair.py, holds or drops each packet)."""
        logfile = self.out / f"impair-{host}.log"
        argv = [
            sys.executable, str(SCRIPTS / "netlab_impair.py"), "--queue", IMPAIR_QUEUE,
            "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms),
            "--loss-pct", str(loss_pct), "--seed", str(seed),
        ]  # fmt: skip
        self.spawn(f"impair-{host}", host, argv, logfile, None)
        if not wait_for(lambda: "bound" in read_text(logfile), 10):
            raise RuntimeError(f"impair daemon on {host} did not start: {read_text(logfile)}")
        self.impaired.add(host)
        for chain, dev in (("OUTPUT", "-o"), ("INPUT", "-i")):
            # --queue-bypass: packets pass untouched if the daemon is gone
            self.iptables(
                host, "-A", chain, dev, "eth0", "-j", "NFQUEUE", "--queue-num", IMPAIR_QUEUE,
                "--queue-bypass",
            )  # fmt: skip

    def unimpair(self, host: str) -> None:
        if host not in self.impaired:
            return
        for chain, dev in (("OUTPUT", "-o"), ("INPUT", "-i")):
            with contextlib.suppress(RuntimeError):  # the rule may not have been added
                self.iptables(
                    host, "-D", chain, dev, "eth0", "-j", "NFQUEUE", "--queue-num",
                    IMPAIR_QUEUE, "--queue-bypass",
                )  # fmt: skip
        self.stop(f"impair-{host}", signal.SIGTERM, timeout=5)
        self.impaired.discard(host)

    def clear_faults(self) -> None:
        for host, method in list(self.faults):
            with contextlib.suppress(Exception):
                self.heal(host, method)
        for host in list(self.impaired):
            with contextlib.suppress(Exception):
                self.unimpair(host)


def cleanup_stale() -> list[str]:
    """Delete the namespaces of labs whose process is gone (a SIGKILLed run); returns them."""
    deleted = []
    for state in sorted(STATE_DIR.glob("rbnl*.json")):
        info = json.loads(state.read_text())
        if Path(f"/proc/{info['pid']}").exists():
            continue  # that lab is still running
        for n in reversed(info["namespaces"]):
            if n in netns_list():
                kill_namespace_pids(n)
                subprocess.run(["ip", "netns", "del", n], timeout=30, check=False)
                deleted.append(n)
        state.unlink()
    return deleted
