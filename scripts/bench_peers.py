"""Scenario 5: the same 5-step Bash chain in Luigi, Prefect and Airflow, next to runbook-celery.

    python scripts/bench_peers.py install                 # all three (several minutes)
    python scripts/bench_peers.py install luigi prefect   # some of them
    python scripts/bench_peers.py status

Peers are an optional extra: each lives in a throwaway virtualenv under
``~/.cache/runbook-bench-peers/<peer>`` (``RUNBOOK_BENCH_PEERS_DIR`` moves it), never in
the project's dependencies. Installing is explicit; ``scripts/bench.py`` only uses the
virtualenvs it finds and reports the others as not installed.

Every engine runs in a process of its own (the peer's virtualenv's Python) that loads a
small driver: it imports the engine, runs the workflow once (the first run, timed from the
moment the process was spawned), then ``runs`` more times in the same process, and writes
its timings to a JSON file. Meanwhile the harness samples the summed VmRSS of the driver
and every process under it (Prefect's temporary server, the Bash steps). A driver that
outlives its watchdog is killed with everything it started and reported as hung.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench_peer_drivers import (
    AIRFLOW_BODY,
    LUIGI_BODY,
    PREFECT_BODY,
    RUNBOOK_BODY,
    driver_source,
)

DEFAULT_DIR = Path.home() / ".cache" / "runbook-bench-peers"
DIR_ENV = "RUNBOOK_BENCH_PEERS_DIR"
WATCHDOG = 180.0  # seconds per peer, first run and the repeated runs together
MIN_BUDGET = 60.0  # seconds of the bench's budget a peer needs left to be started at all
INSTALL_TIMEOUT = 1800.0  # seconds per peer for pip and the one-time setup
SAMPLE_EVERY = 0.05  # seconds between memory samples
STEPS = 5
INSTALL_HINT = "python scripts/bench_peers.py install"


@dataclass(frozen=True)
class Peer:
    """One engine: what to pip-install, and the driver body that runs the chain in it."""

    name: str
    engine: str
    package: str
    version: str
    body: str
    constraints: str | None = None  # URL of a pip constraints file, used when reachable
    cli: tuple[str, ...] = ()  # the engine's own command for one run, timed once as well


@dataclass
class PeerResult:
    """What one engine did in this benchmark run (a row of the report's table)."""

    engine: str
    version: str = "—"
    status: str = "not run"
    first: float | None = None  # spawn → end of the first run, seconds
    runs: list[float] = field(default_factory=list)  # later runs in the same process
    peak_rss_mb: float | None = None
    note: str = ""


# ---------------------------------------------------------------------------- drivers

PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("luigi", "Luigi", "luigi", "3.8.1", LUIGI_BODY),
        Peer("prefect", "Prefect", "prefect", "3.9.1", PREFECT_BODY),
        Peer(
            "airflow",
            "Airflow",
            "apache-airflow",
            "3.3.2",
            AIRFLOW_BODY,
            constraints="https://raw.githubusercontent.com/apache/airflow/"
            "constraints-{version}/constraints-{py}.txt",
            cli=("airflow", "dags", "test", "bench_chain"),
        ),
    )
}


# ---------------------------------------------------------------------------- layout


def peers_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env[DIR_ENV]).expanduser() if env.get(DIR_ENV) else DEFAULT_DIR


@dataclass(frozen=True)
class Layout:
    """Where one peer's virtualenv, one-time state and install record live."""

    root: Path

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def home(self) -> Path:
        """State prepared once at install (migrated DB), copied afresh for every bench run."""
        return self.root / "home"

    @property
    def marker(self) -> Path:
        return self.root / "installed.json"

    @property
    def failure(self) -> Path:
        return self.root / "install-failed.txt"


def layout(name: str, root: Path | None = None) -> Layout:
    """One peer's layout under ``root`` (default: ``peers_dir()``, read when called)."""
    return Layout((root or peers_dir()) / name)


def status(name: str, root: Path | None = None) -> tuple[bool, str]:
    """(usable, a sentence for the report) for one peer, without running anything."""
    lay = layout(name, root)
    if lay.marker.exists() and lay.python.exists():
        info = json.loads(lay.marker.read_text())
        return True, f"installed {info.get('installed', '')}".strip()
    if lay.failure.exists():
        lines = lay.failure.read_text(errors="replace").strip().splitlines()
        return False, "install failed: " + (lines[-1] if lines else "?")[:300]
    return False, f"not installed (install with `{INSTALL_HINT} {name}`)"


def installed_version(name: str, root: Path | None = None) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads(layout(name, root).marker.read_text())["version"])
    return "—"


# ---------------------------------------------------------------------------- install


def constraints_url(peer: Peer) -> str | None:
    """The peer's pip constraints for this Python, if it has one and it is reachable."""
    if peer.constraints is None:
        return None
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    url = peer.constraints.format(version=peer.version, py=py)
    try:
        with urllib.request.urlopen(url, timeout=15) as reply:
            return url if reply.status == 200 else None
    except OSError as exc:
        print(f"{peer.name}: constraints unreachable ({exc}); plain pinned install", flush=True)
        return None


def _run(cmd: list[str], env: Mapping[str, str], log: Path, timeout: float) -> None:
    """Run an install command, appending its output to ``log``; raise with the tail on failure."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(cmd[-3:])}` exited {proc.returncode}:\n" + "\n".join(tail))


def setup_env(name: str, lay: Layout, home: Path) -> dict[str, str]:
    """The environment a peer runs in: its own state under ``home``, quiet logs, no project env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "BENCH_RAW_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{lay.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(lay.venv)
    if name == "prefect":
        env["PREFECT_HOME"] = str(home)
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        # no API URL and ephemeral mode on (the default profile's): a temporary local server
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
    elif name == "airflow":
        env["AIRFLOW_HOME"] = str(home)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(home / "dags")
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(home / "logs")
        env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    return env


def install(name: str, root: Path | None = None) -> str:
    """Create the peer's virtualenv, pip-install the pinned engine, prepare its state once.

    Raises:
        RuntimeError: pip or the setup failed; the reason is also kept for the report.
    """
    peer = PEERS[name]
    lay = layout(name, root)
    if lay.root.exists():
        shutil.rmtree(lay.root)
    lay.root.mkdir(parents=True)
    log = lay.root / "install.log"
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(lay.venv)], check=True, timeout=300)
        base = setup_env(name, lay, lay.home)
        spec = f"{peer.package}=={peer.version}"
        url = constraints_url(peer)
        cmd = [str(lay.python), "-m", "pip", "install", "--quiet", spec]
        _run(cmd + (["--constraint", url] if url else []), base, log, INSTALL_TIMEOUT)
        lay.home.mkdir()
        if name == "airflow":  # what `airflow standalone` does first: create the metadata DB
            _run([str(lay.venv / "bin" / "airflow"), "db", "migrate"], base, log, 600)
        elif name == "prefect":  # one run creates and migrates the temporary server's DB
            _prepare_by_running(peer, lay, base)
        freeze = subprocess.run(
            [str(lay.python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
        ).stdout
        (lay.root / "freeze.txt").write_text(freeze)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        lay.failure.write_text(reason + "\n")
        raise RuntimeError(reason) from exc
    seconds = time.monotonic() - started
    lay.marker.write_text(
        json.dumps(
            {
                "package": peer.package,
                "version": peer.version,
                "constraints": url or "none (plain pinned install)",
                "installed": datetime.now(UTC).strftime("%Y-%m-%d"),
                "seconds": round(seconds),
            }
        )
    )
    return f"{spec} in {seconds:.0f} s" + (f" with {url}" if url else " (no constraints file)")


def _prepare_by_running(peer: Peer, lay: Layout, env: Mapping[str, str]) -> None:
    """Run the workflow once against the prepared home, so its DB exists and is migrated."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as tmp:
        result = run_driver(
            peer.engine, [str(lay.python)], peer.body, env, Path(tmp), lay.home, 0, 600
        )
    if result.status != "ok":
        raise RuntimeError(f"first run failed: {result.status}")


# ---------------------------------------------------------------------------- measuring


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in ticks) of a process, None when it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        rest = text[text.rindex(")") + 2 :].split()
        return int(rest[1]), int(rest[19])
    return None


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cmdline(pid: int) -> bytes | None:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return None


def _unexeced_fork(pid: int, parent: int | None) -> bool:
    """True for a child that still runs its parent's program (forked, not yet exec'd)."""
    if parent is None:
        return False
    mine = _cmdline(pid)
    return mine is not None and mine == _cmdline(parent)


def descendants(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and every process below it, given a pid → parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class TreeSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree (plus fixed extra pids) until stopped.

    It also remembers every process it saw in the tree, with its start time, so that the
    ones a killed driver left behind (orphans are re-parented away from the tree) can be
    killed by their own id without ever hitting a recycled one.
    """

    def __init__(self, root: int, extra: Iterable[int] = ()) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.extra = list(extra)
        self.peak_kb = 0
        self.seen: dict[int, int] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        starts: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                parents[int(entry)], starts[int(entry)] = st
        for pid in descendants(self.root, parents):
            if pid in starts:
                self.seen[pid] = starts[pid]
        live = {pid for pid, start in self.seen.items() if starts.get(pid) == start}
        # a child forked but not yet exec'd (a Bash step being started) shows its parent's
        # pages as its own VmRSS; counting it would add the parent twice
        counted = {pid for pid in live if not _unexeced_fork(pid, parents.get(pid))}
        self.peak_kb = max(self.peak_kb, sum(_rss_kb(pid) for pid in counted | set(self.extra)))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def kill_leftovers(self) -> list[int]:
        """SIGKILL processes of the tree still alive (same pid, same start time)."""
        killed = []
        for pid, start in self.seen.items():
            st = _stat(pid)
            if st is not None and st[1] == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed


@dataclass(frozen=True)
class TreeRun:
    """How one watched process tree ended."""

    returncode: int | None  # None: stopped by the watchdog
    spawned: float  # time.time() just before the spawn
    wall: float
    peak_rss_mb: float
    leftovers: int  # processes it left behind, killed by their id


def run_tree(
    cmd: list[str],
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    timeout: float,
    extra_pids: Iterable[int] = (),
) -> TreeRun:
    """Run ``cmd`` in a new session under a watchdog, sampling its tree's memory; kill it all."""
    with log.open("wb") as out:
        spawned, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = TreeSampler(proc.pid, extra_pids)
    sampler.start()
    code: int | None = None
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        wall = time.perf_counter() - t0
        sampler.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left = sampler.kill_leftovers()
    return TreeRun(code, spawned, wall, sampler.peak_kb / 1024, len(left))


def run_driver(
    engine: str,
    python: list[str],
    body: str,
    env: Mapping[str, str],
    workdir: Path,
    home: Path,
    runs: int,
    timeout: float,
    extra_pids: Iterable[int] = (),
) -> PeerResult:
    """Run one engine's driver under a watchdog; time it and sample its memory."""
    result = PeerResult(engine)
    workdir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    script = workdir / "driver.py"
    script.write_text(driver_source(body))
    out, log = workdir / "result.json", workdir / "driver.log"
    cmd = [*python, str(script), str(home), str(runs), str(out)]
    run_env = {**env, "BENCH_PEER_STEPS": str(STEPS)}
    tree = run_tree(cmd, run_env, workdir, log, timeout, extra_pids)
    result.peak_rss_mb = tree.peak_rss_mb or None
    if tree.leftovers:
        result.note = f"killed {tree.leftovers} process(es) it left behind"
    if tree.returncode is None:
        result.status = f"hung: no result after {timeout:.0f} s (watchdog); killed"
        return result
    if tree.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        result.status = f"error: exit {tree.returncode}: {tail[0][:300]}"
        return result
    data = json.loads(out.read_text())
    result.version = str(data["version"])
    result.first = float(data["first_done"]) - tree.spawned
    result.runs = [float(x) for x in data["runs"]]
    result.peak_rss_mb = max(tree.peak_rss_mb, data["self_hwm_kb"] / 1024)
    result.status = "ok"
    return result


def measure_peer(
    name: str, workdir: Path, runs: int, timeout: float, root: Path | None = None
) -> PeerResult:
    """Run one installed peer (see ``status`` first); never raises for the peer's failures."""
    peer = PEERS[name]
    lay = layout(name, root)
    home = workdir / "home"
    started = time.monotonic()
    try:  # a fresh copy of the state prepared at install, so runs never pile up in it
        shutil.copytree(lay.home, home, ignore=shutil.ignore_patterns("logs"))
        env = setup_env(name, lay, home)
        python = [str(lay.python)]
        result = run_driver(peer.engine, python, peer.body, env, workdir, home, runs, timeout)
        left = timeout - (time.monotonic() - started)
        if peer.cli and result.status == "ok" and left > 1:
            result.note = _time_cli(peer, lay, env, workdir, left)
    except (OSError, ValueError, KeyError) as exc:
        result = PeerResult(peer.engine, status=f"error: {type(exc).__name__}: {exc}"[:300])
    if result.version == "—":
        result.version = installed_version(name, root)
    return result


def _time_cli(peer: Peer, lay: Layout, env: Mapping[str, str], workdir: Path, left: float) -> str:
    """One run through the engine's own command in a fresh process, for the status column."""
    cmd = [str(lay.venv / "bin" / peer.cli[0]), *peer.cli[1:]]
    tree = run_tree(cmd, env, workdir, workdir / "cli.log", left)
    shown = f"`{' '.join(peer.cli)}` in a fresh process: "
    if tree.returncode is None:
        return shown + f"no result after {left:.0f} s"
    if tree.returncode != 0:
        return shown + f"exit {tree.returncode}"
    return shown + f"{tree.wall:.1f} s, {tree.peak_rss_mb:.0f} MB"


def measure_runbook(
    workflow: Path,
    env: Mapping[str, str],
    workdir: Path,
    runs: int,
    timeout: float,
    extra_pids: Iterable[int],
) -> PeerResult:
    """The same driver for runbook-celery: a fresh client against the running worker.

    ``extra_pids`` (the worker's processes and Redis) count towards its memory, as a
    peer's server and executor do towards the peer's.
    """
    run_env = {**env, "BENCH_PEER_WORKFLOW": str(workflow)}
    return run_driver(
        "runbook-celery",
        [sys.executable],
        RUNBOOK_BODY,
        run_env,
        workdir,
        workdir / "home",
        runs,
        timeout,
        extra_pids,
    )


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench_peers.py",
        description="Install the benchmark's peers (Luigi, Prefect, Airflow) in throwaway "
        f"virtualenvs under {peers_dir()} (${DIR_ENV}), or show what is installed.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="create the virtualenvs (several minutes)")
    inst.add_argument("peers", nargs="*", help=f"some of: {', '.join(PEERS)} (default: all)")
    sub.add_parser("status", help="what is installed")
    args = p.parse_args(argv)
    unknown = set(getattr(args, "peers", [])) - set(PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    if args.command == "status":
        for name in PEERS:
            print(f"{name:8} {status(name)[1]}")
        return 0
    code = 0
    for name in args.peers or list(PEERS):
        print(f"{name}: installing {PEERS[name].package}=={PEERS[name].version} ...", flush=True)
        try:
            print(f"{name}: installed {install(name)}", flush=True)
        except RuntimeError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
