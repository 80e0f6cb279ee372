"""Keeping every process a step starts inside the step, so that none outlives it.

A step's Bash runs as its own process group, but a process can leave that group
(``setsid cmd &``, a double-forking daemon, ``set -m``). Two mechanisms bring those back;
the worker picks one as it starts (``RUNBOOK_CONTAINMENT``: ``auto``, ``cgroup`` or
``subreaper``; ``auto`` takes ``cgroup`` where cgroup v2 is writable):

* ``cgroup``: the worker makes a cgroup ``runbook-PID-START`` under its own (cgroup v2;
  writable as root, or where systemd delegates it) and runs each step in a child
  ``step-PGID`` of it. No process can leave a cgroup without write access to the cgroup
  tree, so ``cgroup.kill`` ends every process of the step, wherever it moved in the process
  tree. The pool process does so when the step ends (exit, cancel, timeout, lost lease),
  the guardian (guardian.py) when the pool process dies or the lease fence passes, and any
  worker on the machine (as it starts, and on each reconciler pass) for worker cgroups
  next to its own whose worker is gone.
* ``subreaper``: the process running steps is a child subreaper (``prctl``), so a process
  of the step whose parent exits becomes its child rather than init's; once the step's
  Bash is over, every such process and its descendants are killed. This holds while the
  pool process lives; when it dies, only the step's process group is killed (by the
  guardian).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger("runbook_celery.worker")

AUTO, CGROUP, SUBREAPER = "auto", "cgroup", "subreaper"
MODES = (AUTO, CGROUP, SUBREAPER)
WORKER_PREFIX = "runbook-"
STEP_PREFIX = "step-"
_PR_SET_CHILD_SUBREAPER = 36


class ContainmentError(OSError):
    """The containment asked for is not available here (e.g. cgroup v2 not writable)."""


@dataclass(frozen=True)
class Containment:
    """How this worker contains its steps; ``root`` is the worker cgroup in cgroup mode."""

    mode: str
    root: str | None = None
    why: str = ""  # why auto did not choose cgroup

    def describe(self) -> str:
        """A sentence for the worker's log."""
        where = f" (worker cgroup {self.root})" if self.root else f" ({self.why})" * bool(self.why)
        return f"steps are contained by {self.mode}{where}"

    def step_cgroup(self, pgid: int) -> str | None:
        """The cgroup of the step whose process group is ``pgid`` (cgroup mode only)."""
        return None if self.root is None else os.path.join(self.root, f"{STEP_PREFIX}{pgid}")


# ---------------------------------------------------------------- choosing, once per worker

_current: Containment | None = None
_subreaper_pid = 0


def setup(mode: str = AUTO) -> Containment:
    """Choose how steps are contained (in the worker's main process, before the pool forks).

    Raises:
        ContainmentError: ``mode`` is ``cgroup`` and no cgroup v2 is writable here.
    """
    global _current
    if mode not in MODES:
        raise ValueError(f"unknown containment {mode!r}; use one of {', '.join(MODES)}")
    chosen = Containment(SUBREAPER)
    if mode in (AUTO, CGROUP):
        try:
            chosen = Containment(CGROUP, _make_worker_cgroup())
        except OSError as exc:
            if mode == CGROUP:
                raise ContainmentError(
                    exc.errno or errno.EPERM,
                    f"RUNBOOK_CONTAINMENT=cgroup, but no writable cgroup v2 here: {exc}; "
                    "run the worker as root or in a cgroup systemd delegates "
                    "(Delegate=yes), or use RUNBOOK_CONTAINMENT=subreaper",
                ) from None
            chosen = Containment(SUBREAPER, why=f"cgroup v2 not writable: {exc}")
    _current = chosen
    return chosen


def current() -> Containment:
    """The containment chosen for this worker (``auto`` on first use where none was)."""
    return _current if _current is not None else setup(AUTO)


# ---------------------------------------------------------------- cgroup v2


def _cgroup2_mount() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4].replace("\\040", " ")
    raise FileNotFoundError(errno.ENOENT, "no cgroup2 file system is mounted")


def _own_cgroup(mount: str) -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("0::"):
                return os.path.join(mount, line[3:].strip().lstrip("/"))
    raise FileNotFoundError(errno.ENOENT, "this process is in no cgroup v2")


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, a unique name."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _make_worker_cgroup() -> str:
    """Create this worker's cgroup under its own, ending the steps of dead workers first."""
    parent = _own_cgroup(_cgroup2_mount())
    sweep(parent)
    pid = os.getpid()
    root = os.path.join(parent, f"{WORKER_PREFIX}{pid}-{_start_time(pid)}")
    os.mkdir(root)
    try:
        if not os.access(os.path.join(root, "cgroup.kill"), os.W_OK):
            # no cgroup.kill (a kernel before 5.14): of no use
            raise PermissionError(errno.EACCES, "cgroup.kill is missing or not writable")
        _probe(root)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(root)
        raise
    atexit.register(_remove_worker_cgroup, root, pid)
    return root


def _probe(root: str) -> None:
    """Move a child into a cgroup under ``root`` as a step is moved, so that a cgroup this
    worker may create but not use (e.g. one whose parent has controllers enabled) is found
    now rather than failing every step."""
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    path = os.path.join(root, "probe")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "cgroup.procs"), "w") as fh:
            fh.write(str(child.pid))
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()
        remove_cgroup(path)


def _remove_worker_cgroup(root: str, owner: int) -> None:
    """At the worker's exit: end what is left in its cgroup and remove it."""
    if os.getpid() != owner:
        return  # a forked child inherited this handler
    for child in _children(root):
        remove_cgroup(os.path.join(root, child))
    with contextlib.suppress(OSError):
        os.rmdir(root)


def sweep(parent: str) -> list[str]:
    """End the steps of worker cgroups under ``parent`` whose worker is gone; their names."""
    swept = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            pid, _, start = name[len(WORKER_PREFIX) :].partition("-")
            if not name.startswith(WORKER_PREFIX) or not pid.isdigit():
                continue
            if _start_time(int(pid)) == start:
                continue  # its worker is alive
            root = os.path.join(parent, name)
            for child in _children(root):
                remove_cgroup(os.path.join(root, child))
            with contextlib.suppress(OSError):
                os.rmdir(root)
                swept.append(name)
                log.warning("ended what was left of a dead worker's steps (cgroup %s)", root)
    return swept


def sweep_dead_workers() -> list[str]:
    """``sweep`` next to this worker's cgroup (cgroup mode; the reconciler calls it)."""
    box = _current
    if box is None or box.root is None:
        return []
    return sweep(os.path.dirname(box.root))


def _children(root: str) -> list[str]:
    with contextlib.suppress(OSError):
        return [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    return []


def make_step_cgroup(root: str, pgid: int, pid: int) -> str:
    """Create ``step-PGID`` under ``root`` and move ``pid`` into it."""
    path = os.path.join(root, f"{STEP_PREFIX}{pgid}")
    try:
        os.mkdir(path)
    except FileExistsError:  # left by a step whose removal failed: empty it, reuse it
        kill_cgroup(path)
        _wait_empty(path, 2.0)
    with open(os.path.join(path, "cgroup.procs"), "w") as fh:
        fh.write(str(pid))
    return path


def kill_cgroup(path: str) -> None:
    """SIGKILL every process in the cgroup at ``path`` (gone already: nothing to do)."""
    with (
        contextlib.suppress(FileNotFoundError, ProcessLookupError),
        open(os.path.join(path, "cgroup.kill"), "w") as fh,
    ):
        fh.write("1")


def remove_cgroup(path: str, wait: float = 5.0) -> bool:
    """Kill what is in the cgroup, wait until it is empty, remove it; False if it stays."""
    kill_cgroup(path)
    _wait_empty(path, wait)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("cannot remove step cgroup %s: %s", path, exc)
        return False
    return True


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as fh:
            return "populated 1" in fh.read()
    except FileNotFoundError:
        return False


def _wait_empty(path: str, limit: float) -> None:
    """Wait until no process is left in the cgroup (the kernel signals cgroup.events)."""
    end = time.monotonic() + limit
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while _populated(path) and time.monotonic() < end:
            poller.poll(max(1, int((end - time.monotonic()) * 1000)))
    finally:
        os.close(fd)


# ---------------------------------------------------------------- subreaper


def become_subreaper() -> None:
    """Make this process the child subreaper of what it starts (once per process)."""
    global _subreaper_pid
    if _subreaper_pid == os.getpid():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    _subreaper_pid = os.getpid()


def _processes() -> dict[int, tuple[int, int]]:
    """Every process's parent and start time (clock ticks since boot), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            found[int(entry)] = (int(fields[1]), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def start_ticks(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot); 0 if it is gone."""
    start = _start_time(pid)
    return int(start) if start and start.isdigit() else 0


def kill_adopted(keep: set[int], leader: int, since: int, rounds: int = 50) -> int:
    """Kill the processes this subreaper adopted from a step, with their descendants, and
    reap them; the number killed.

    Adopted: a child of this process not in ``keep`` that started after the step's Bash
    (pid ``leader``, started at ``since``): children this process started before the step
    are not the step's. Start times are in clock ticks (10 ms), so within the step's tick
    the later pid is the later process.
    Killing a process hands its children to us, so this repeats until none is left.
    """
    me, killed = os.getpid(), 0
    for _ in range(rounds):
        procs = _processes()
        adopted = {
            p
            for p, (parent, start) in procs.items()
            if parent == me and (start > since or (start == since and p > leader))
        } - keep
        if not adopted:
            break
        doomed, frontier = set(adopted), set(adopted)
        while frontier:
            frontier = {p for p, (parent, _) in procs.items() if parent in frontier} - doomed
            doomed |= frontier
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed += len(doomed)
        for pid in adopted:
            _reap(pid, 5.0)
    return killed


def _reap(pid: int, limit: float) -> None:
    """Reap the killed child ``pid``, waiting at most ``limit`` seconds (a process in
    uninterruptible sleep dies only when its I/O returns; it then stays a zombie of this
    process, which does not block the step)."""
    with contextlib.suppress(OSError):
        fd = os.pidfd_open(pid)
        try:
            select.select([fd], [], [], limit)
        finally:
            os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
