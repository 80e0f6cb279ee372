"""Run one step's Bash: own session, values passed as data, bounded capture, no orphans.

Process layout of a step::

    worker pool process ──pipe──> guardian (bash, own session, one per pool process)
      └── bash -eo pipefail (session + process-group leader, runs the step via eval)
            └── the step's own commands and their children

Each step's bash first registers its process group with the guardian (``+PGID``) through
the guardian's pipe, then closes its copy of the pipe; the pool process unregisters the
group (``-PGID``) once the step is over and its group has been killed. The guardian blocks
reading that pipe, whose write end only the pool process holds: when the pool process dies,
even by SIGKILL, the guardian reads end-of-file and SIGKILLs every group still
registered. Because the step registers itself before it runs anything, there is no moment
at which a step could outlive its worker unnoticed. So nothing the step started outlives
it or its worker, and a timeout or cancel can signal the group (SIGTERM, a grace period,
then SIGKILL). One long-lived guardian per process replaces a lifeline subshell per step,
which cost a fork on every step.

Processes can leave the step's process group (``setsid``, a double fork, ``set -m``):
``containment.py`` keeps them inside the step all the same (a cgroup per step, which the
pool process, the lease keeper and the guardian kill; or this process as a subreaper).
With ``worker --step-user`` the step's Bash runs as that user (``stepuser.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from ..plan.masking import Masker, StreamMasker
from ..store.events import FailureReason
from . import containment, stepuser

COMMAND_VAR = "RUNBOOK_COMMAND__"
LINE_LIMIT = 8192  # characters kept of one log line
TAIL_LINES = 200  # lines of each stream kept in memory

_OUTPUT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

OnLine = Callable[[str, str], None]  # (stream name, line)
Tick = Callable[[], "bool | str"]  # truthy when the step must stop: True (cancel) or a reason
HANDBACK = "handback"


@dataclass
class BashResult:
    """What a step's Bash did; ``reason`` is set when it did not simply exit."""

    exit_code: int | None
    outputs: dict[str, str] = field(default_factory=dict)
    stdout_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    reason: str | None = None
    message: str | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.reason is None


def _wrapper(guardian_fd: int, go_fd: int | None = None, preamble: str = "") -> str:
    # in cgroup mode, wait until the pool process has put this Bash into the step's cgroup
    # (end of file instead: the pool process died first, so run nothing)
    wait = "" if go_fd is None else f"read -r -u {go_fd} _ || exit 125; exec {go_fd}<&- ; "
    return (
        wait
        # register with the guardian before anything else runs; SIGPIPE ignored and `|| :`
        # so that a guardian that is gone cannot kill or fail the step (-e is on)
        + f"trap '' PIPE; echo \"+$$\" >&{guardian_fd} 2>/dev/null || : ; trap - PIPE; "
        f"exec {guardian_fd}>&- ; {preamble}"
        f'__runbook_cmd=${COMMAND_VAR}; unset {COMMAND_VAR}; eval "$__runbook_cmd"'
    )


# Reads "+PGID" / "-PGID" lines, and "=PGID T": kill that group once CLOCK_BOOTTIME
# (/proc/uptime, in centiseconds) reaches T unless a later "=" line moves T (the step's
# lease could not be renewed: the pool process may be stopped or hung, so the deadline is
# kept here, outside it). At end of file (its pool process is gone), kills every process
# group still registered. Killing a group also kills the step's cgroup "$1/step-PGID" when
# the worker has a cgroup ($1, see containment.py): what left the group dies too. Bash
# builtins only: no fork per line or per wake-up.
_GUARDIAN_SCRIPT = """
declare -A g d
cg=$1
k() { kill -KILL -- "-$1"; [[ -z $cg ]] || echo 1 > "$cg/step-$1/cgroup.kill"; } 2>/dev/null
while :; do
  t=()
  if ((${#d[@]})); then
    read -r up _ < /proc/uptime; now=$((10#${up/./})); min=
    for pg in "${!d[@]}"; do
      if ((d[$pg] <= now)); then k "$pg"; unset "g[$pg]" "d[$pg]"
      elif [[ -z $min ]] || ((d[$pg] < min)); then min=${d[$pg]}; fi
    done
    if [[ -n $min ]]; then
      w=$((min - now)); printf -v frac %02d $((w % 100)); t=(-t "$((w / 100)).$frac")
    fi
  fi
  if read -r "${t[@]}" line; then
    pg=${line:1}; pg=${pg%% *}; [[ $pg =~ ^[0-9]+$ ]] && ((10#$pg > 1)) || continue
    case ${line:0:1} in
      +) g[$pg]=1 ;;
      -) unset "g[$pg]" "d[$pg]" ;;
      =) at=${line##* }; [[ $at =~ ^[0-9]+$ ]] && { g[$pg]=1; d[$pg]=$at; } ;;
    esac
  elif (($? <= 128)); then break
  fi
done
for pg in "${!g[@]}"; do k "$pg"; done
"""


class _Guardian:
    """The process's guardian: kills its steps' process groups if this process dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.owner = 0
        self.lock = threading.Lock()
        self.inherited: list[subprocess.Popen[bytes]] = []

    def fd(self) -> int:
        """The write end of the guardian's pipe, starting a guardian when there is none."""
        with self.lock:
            proc = self.proc
            if proc is None or self.owner != os.getpid() or proc.poll() is not None:
                proc = self.proc = subprocess.Popen(
                    ["bash", "-c", _GUARDIAN_SCRIPT, "guardian", containment.current().root or ""],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # a kill of the worker's group must spare it
                )
                self.owner = os.getpid()
            return proc.stdin.fileno()  # type: ignore[union-attr]

    def deadline(self, pgid: int, at: float) -> None:
        """Kill group ``pgid`` at ``at`` (CLOCK_BOOTTIME seconds) unless moved again.

        Enforced by the guardian, so it holds even while this process is stopped (SIGSTOP,
        a long pause): the fence of a step whose lease could not be renewed.
        """
        proc = self.proc
        if proc is None or self.owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            os.write(proc.stdin.fileno(), f"={pgid} {max(0, int(at * 100))}\n".encode())  # type: ignore[union-attr]

    def release(self, pgid: int) -> None:
        """The step's group is dead: the guardian must not kill it (its id may be reused)."""
        proc = self.proc
        if proc is None or self.owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            os.write(proc.stdin.fileno(), f"-{pgid}\n".encode())  # type: ignore[union-attr]

    def after_fork_in_child(self) -> None:
        """A forked child must not keep its parent's guardian from seeing end of file."""
        proc, self.proc, self.lock = self.proc, None, threading.Lock()
        if proc is not None and self.owner != os.getpid():
            self.inherited.append(proc)  # kept: its __del__ must not reap a non-child
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]


_guardian = _Guardian()
os.register_at_fork(after_in_child=_guardian.after_fork_in_child)


_output_dir: str | None = None
_output_count = itertools.count()


def _output_file() -> str:
    """A fresh path for $RUNBOOK_OUTPUT in a private (0700) directory this process keeps.

    The file is not created: a step that writes outputs creates it with ``>>``, and a
    step without outputs (most steps) costs no file-system calls beyond one stat.
    """
    global _output_dir
    if _output_dir is None or not os.path.isdir(_output_dir):
        _output_dir = stepuser.make_output_dir()
    path = os.path.join(_output_dir, f"output-{next(_output_count)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an earlier process with this pid that was killed
    return path


def run_bash(
    command: str,
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    output_limit: int = 1024 * 1024,
    timeout: float | None = None,
    kill_grace: float = 10.0,
    tick: Tick | None = None,
    tick_interval: float = 0.5,
    on_line: OnLine | None = None,
    on_spawn: Callable[[int], None] | None = None,
    masker: Masker | None = None,
) -> BashResult:
    """Run ``command`` with ``bash -eo pipefail`` and collect exit code, outputs and tails.

    ``on_spawn`` gets the step's process group id as soon as Bash runs (lease fencing).
    ``masker`` masks secrets in the output before it is cut into lines (masking.py).
    """
    started = time.monotonic()
    output_path = _output_file()
    full_env = dict(env)
    full_env["RUNBOOK_OUTPUT"] = output_path
    full_env[COMMAND_VAR] = command
    if (nul := nul_variable(full_env)) is not None:
        return BashResult(None, reason=FailureReason.BAD_INPUT, message=nul)
    inputs = PlacedValues(full_env)
    try:
        try:
            inputs = place_values(full_env)
            proc, cgroup = _spawn(inputs, cwd)
        except OSError as exc:
            return BashResult(
                None, reason=FailureReason.SPAWN_ERROR, message=f"cannot start bash: {exc}"
            )
        finally:
            inputs.close()  # the child holds its own copies until its wrapper reads them
        streams = {
            proc.stdout.fileno(): _Stream("stdout", on_line, masker),  # type: ignore[union-attr]
            proc.stderr.fileno(): _Stream("stderr", on_line, masker),  # type: ignore[union-attr]
        }
        reason: str | None = None
        try:
            if on_spawn is not None:
                on_spawn(proc.pid)
            reason = _supervise(proc, streams, timeout, kill_grace, tick, tick_interval)
        finally:
            _end_step(proc, cgroup)  # whatever the step left behind dies
            _drain(streams)
            _guardian.release(proc.pid)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        out, err = streams.values()
        result = BashResult(
            exit_code=proc.returncode,
            stdout_tail=list(out.tail),
            stderr_tail=list(err.tail),
            reason=reason,
            duration=time.monotonic() - started,
        )
        if reason == FailureReason.TIMEOUT:
            result.message = f"timed out after {timeout:g}s"
        elif reason == FailureReason.CANCELLED:
            result.message = "cancelled"
        elif reason == HANDBACK:
            result.message = "handed back: the worker is shutting down"
        elif result.exit_code == 0:
            _collect_outputs(output_path, output_limit, result)
        return result
    finally:
        inputs.close()
        with contextlib.suppress(OSError):
            os.unlink(output_path)


# ------------------------------------------------------------------ passing values to Bash
#
# Linux refuses to start a program when one environment string is longer than
# MAX_ARG_STRLEN (128 KiB) or all of them together exceed ARG_MAX (E2BIG, "Argument list too
# long"). A step's command and values (outputs of up to RUNBOOK_OUTPUT_LIMIT, params, `run:`
# text) can be larger, so those go through memfds instead: the wrapper reads each into a
# Bash variable of the same name before it evaluates the command, so "$NAME" expands to the
# exact value. Such a variable is not exported: a program the step starts could not be
# given it either (every exec would fail with E2BIG).

MAX_ARG_STRLEN = 128 * 1024  # bytes of one "NAME=value" string, its NUL included
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_budget() -> int:
    """Bytes of environment a step is started with, at most: half of ARG_MAX, so that the
    programs the step starts keep room for their own arguments."""
    try:
        arg_max = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        arg_max = 2 * 1024 * 1024
    return max(64 * 1024, arg_max // 2)


@dataclass
class PlacedValues:
    """The environment Bash is started with, and the values it reads from file descriptors."""

    env: dict[str, str]
    fds: tuple[int, ...] = ()
    preamble: str = ""  # Bash that reads each value from its descriptor, then closes it
    by_fd: tuple[str, ...] = ()  # names of the values passed through descriptors

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = ()


def nul_variable(env: Mapping[str, str]) -> str | None:
    """Which variable holds a NUL byte (Bash can take none; Popen would raise ValueError)."""
    for name, value in env.items():
        if "\x00" in name or "\x00" in value:
            shown = "the step's command" if name == COMMAND_VAR else f"variable {name!r}"
            return f"{shown} contains a NUL byte (\\0), which Bash cannot take"
    return None


def _env_bytes(name: str, value: str) -> int:
    return len(os.fsencode(name)) + len(os.fsencode(value)) + 2 + 8  # "=", NUL, pointer


def place_values(env: Mapping[str, str], budget: int | None = None) -> PlacedValues:
    """Keep small values in the environment; pass the large ones through memfds.

    A value goes through a descriptor when its "NAME=value" string is over MAX_ARG_STRLEN,
    then the largest others until the environment fits ``budget`` bytes. Only names Bash can
    assign qualify (others stay in the environment: a worker's own variables are small).
    """
    budget = _env_budget() if budget is None else budget
    sizes = {name: _env_bytes(name, value) for name, value in env.items()}
    total = sum(sizes.values())
    movable = sorted((n for n in env if _SHELL_NAME.match(n)), key=lambda n: sizes[n], reverse=True)
    chosen: list[str] = []
    for name in movable:
        if sizes[name] <= MAX_ARG_STRLEN and total <= budget:
            break
        chosen.append(name)
        total -= sizes[name]
    if not chosen:
        return PlacedValues(dict(env))
    kept = {n: v for n, v in env.items() if n not in chosen}
    fds: list[int] = []
    reads: list[str] = []
    try:
        for name in chosen:
            fd = _value_fd(env[name])
            fds.append(fd)
            # read -d '': up to end of file (no NUL inside), keeping every byte; it
            # returns 1 at end of file, which -e must not take for a failure
            reads.append(f"IFS= read -r -d '' {name} <&{fd} || : ; exec {fd}<&- ; ")
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return PlacedValues(kept, tuple(fds), "".join(reads), tuple(chosen))


def _value_fd(value: str) -> int:
    """A descriptor open on an in-memory file holding ``value``, at its start."""
    data = os.fsencode(value)
    fd = os.memfd_create("runbook-value", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


# this process's running step shells (a subreaper must not kill them), with when each
# started (what a subreaper adopts from a step started no earlier than the step)
_live_steps: dict[int, int] = {}


def _spawn(inputs: PlacedValues, cwd: str | None) -> tuple[subprocess.Popen[bytes], str | None]:
    """Start the step's Bash, contained (containment.py), with its values (``inputs``: the
    environment, and memfds for the large ones): the process and its cgroup (cgroup mode).
    Raises OSError when Bash cannot start or cannot be contained."""
    box = containment.current()
    if box.mode == containment.SUBREAPER:
        containment.become_subreaper()
    guardian_fd = _guardian.fd()
    switch = stepuser.popen_args(inputs.env)
    go_r, go_w = os.pipe() if box.root else (None, None)
    fds = (guardian_fd, *inputs.fds) if go_r is None else (guardian_fd, go_r, *inputs.fds)
    try:
        proc = subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", _wrapper(guardian_fd, go_r, inputs.preamble)],
            env=inputs.env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=fds,
            **switch,
        )
    except OSError:
        if go_w is not None:
            os.close(go_w)
        raise
    finally:
        if go_r is not None:
            os.close(go_r)
    _live_steps[proc.pid] = containment.start_ticks(proc.pid) if box.root is None else 0
    if box.root is None or go_w is None:
        return proc, None
    try:
        cgroup = containment.make_step_cgroup(box.root, proc.pid, proc.pid)
        os.write(go_w, b"go\n")
    except OSError as exc:
        os.close(go_w)  # end of file: the Bash exits without running the step
        proc.wait()
        _live_steps.pop(proc.pid, None)
        for stream in (proc.stdout, proc.stderr):
            stream.close()  # type: ignore[union-attr]  # PIPE: never None
        raise OSError(exc.errno, f"cannot put it into its cgroup: {exc}") from None
    os.close(go_w)
    return proc, cgroup


def _end_step(proc: subprocess.Popen[bytes], cgroup: str | None) -> None:
    """Kill every process of the step: its group, its cgroup, or (subreaper) whatever the
    step left to this process; then reap the step's Bash."""
    _killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        containment.kill_cgroup(cgroup)
    proc.wait()
    since = _live_steps.pop(proc.pid, 0)
    if cgroup is not None:
        containment.remove_cgroup(cgroup)
    elif containment.current().mode == containment.SUBREAPER:
        keep = set(_live_steps)
        if _guardian.proc is not None:
            keep.add(_guardian.proc.pid)
        containment.kill_adopted(keep, proc.pid, since)


def signal_step(pgid: int, sig: int) -> None:
    """Signal the step whose process group is ``pgid``; SIGKILL ends its cgroup as well
    (the lease fence: processes that left the group must die too)."""
    _killpg(pgid, sig)
    if sig == signal.SIGKILL:
        cgroup = containment.current().step_cgroup(pgid)
        if cgroup is not None:
            containment.kill_cgroup(cgroup)


def _supervise(
    proc: subprocess.Popen[bytes],
    streams: dict[int, _Stream],
    timeout: float | None,
    kill_grace: float,
    tick: Tick | None,
    tick_interval: float,
) -> str | None:
    """Read output as it comes and wait for the step, in one thread, without polling.

    Wakes on output, on the process's exit (a pidfd), at the next tick and at the
    deadline; stops the step on timeout or when ``tick`` says so.
    """
    deadline = time.monotonic() + timeout if timeout else None
    next_tick = time.monotonic() + tick_interval
    with selectors.DefaultSelector() as sel:
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                wake = next_tick if deadline is None else min(next_tick, deadline)
                if pidfd is None:  # old kernels: look at the process at least every 50 ms
                    wake = min(wake, now + 0.05)
                for key, _ in sel.select(max(0.0, wake - now)):
                    if key.fd == pidfd:
                        continue
                    if not streams[key.fd].read(key.fd):
                        sel.unregister(key.fd)
                if proc.poll() is not None:
                    return None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    _stop_group(proc, kill_grace)
                    return FailureReason.TIMEOUT
                if now >= next_tick:
                    next_tick = now + tick_interval
                    for stream in streams.values():
                        stream.idle()
                    verdict = tick() if tick is not None else False
                    if verdict:
                        _stop_group(proc, kill_grace)
                        return HANDBACK if verdict == HANDBACK else FailureReason.CANCELLED
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _drain(streams: dict[int, _Stream], limit: float = 2.0) -> None:
    """Read what is left once the process group is gone (bounded: a setsid escapee may hold
    a pipe open)."""
    end = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        for fd, stream in streams.items():
            if not stream.closed:
                sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(max(0.0, end - time.monotonic())):
                if not streams[key.fd].read(key.fd):
                    sel.unregister(key.fd)
    for stream in streams.values():
        stream.finish()


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the step's process group, then SIGKILL it after ``grace`` seconds."""
    _killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Stream:
    """One output stream: mask secrets, split into lines, keep a bounded tail, forward each."""

    def __init__(self, name: str, on_line: OnLine | None, masker: Masker | None = None) -> None:
        self.name = name
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.partial = b""
        self.closed = False
        self.masking: StreamMasker | None = masker.stream() if masker else None

    def read(self, fd: int) -> bool:
        """Read what is available; False at end of file."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._split(self.masking.feed(data) if self.masking else data)
        return True

    def idle(self) -> None:
        """A supervision tick: let go of output held back as a possible secret's start."""
        if self.masking:
            self._split(self.masking.idle())

    def finish(self) -> None:
        if self.masking:
            self._split(self.masking.finish())
        if self.partial:
            self._emit(self.partial)
            self.partial = b""

    def _split(self, data: bytes) -> None:
        if not data:
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            self._emit(raw)
        if len(self.partial) > LINE_LIMIT * 4:  # a huge line without newline: cut it
            self._emit(self.partial)
            self.partial = b""

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")[:LINE_LIMIT]
        self.tail.append(line)
        if self.on_line is not None:
            try:
                self.on_line(self.name, line)
            except Exception:  # a log sink must never break the step
                self.on_line = None


def _open_outputs(path: str) -> int | None:
    """Open $RUNBOOK_OUTPUT as the step left it: a plain file, never through a link (a step
    running as another user must not make this process read a file it cannot read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:  # the step wrote no outputs
        return None
    except OSError:
        raise ValueError("$RUNBOOK_OUTPUT must be a regular file, not a link") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise ValueError("$RUNBOOK_OUTPUT must be a regular file with no other links")
    return fd


def _collect_outputs(path: str, limit: int, result: BashResult) -> None:
    try:
        fd = _open_outputs(path)
    except ValueError as exc:
        result.reason = FailureReason.EXIT_CODE
        result.message = f"bad $RUNBOOK_OUTPUT: {exc}"
        return
    if fd is None:
        return
    with open(fd, encoding="utf-8", errors="replace") as fh:
        _read_outputs(fh, os.fstat(fd).st_size, limit, result)


def _read_outputs(fh: TextIO, size: int, limit: int, result: BashResult) -> None:
    if size > limit:
        result.reason = FailureReason.OUTPUT_TOO_LARGE
        result.message = (
            f"$RUNBOOK_OUTPUT holds {size} bytes, more than the {limit}-byte limit "
            "(RUNBOOK_OUTPUT_LIMIT)"
        )
        return
    text = fh.read()
    try:
        result.outputs = parse_outputs(text)
    except ValueError as exc:
        result.reason = FailureReason.EXIT_CODE
        result.message = f"bad $RUNBOOK_OUTPUT: {exc}"


def parse_outputs(text: str) -> dict[str, str]:
    """Parse ``key=value`` lines and ``key<<DELIM`` ... ``DELIM`` blocks (GitHub Actions style)."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            key, delim = key.strip(), delim.strip()
            if not _OUTPUT_KEY.match(key) or not delim:
                raise ValueError(f"line {i}: bad multi-line output header {line[:60]!r}")
            body: list[str] = []
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"line {i}: output {key!r} is missing its end marker {delim!r}")
            i += 1
            outputs[key] = "\n".join(body)
            continue
        if "=" not in line:
            raise ValueError(f"line {i}: expected key=value, got {line[:60]!r}")
        key, value = line.split("=", 1)
        key = key.strip()
        if not _OUTPUT_KEY.match(key):
            raise ValueError(f"line {i}: bad output name {key[:60]!r}")
        outputs[key] = value
    return outputs
