"""The step's Bash as a process: started contained, signalled, and ended with all it started.

The step's Bash is a session and process-group leader; it registers with the guardian
(``guardian.py``) before it runs anything. Processes that leave the group (``setsid``, a
double fork, ``set -m``) are kept inside the step by ``containment.py`` (a cgroup per step,
or this process as a subreaper). With ``worker --step-user`` the step's Bash runs as that
user (``stepuser.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from . import containment, stepuser
from .bashenv import COMMAND_VAR, PlacedValues
from .guardian import GUARDIAN, registration

# this process's running step shells (a subreaper must not kill them), with when each
# started (what a subreaper adopts from a step started no earlier than the step)
_live_steps: dict[int, int] = {}


def _wrapper(guardian_fd: int, go_fd: int | None = None, preamble: str = "") -> str:
    # in cgroup mode, wait until the pool process has put this Bash into the step's cgroup
    # (end of file instead: the pool process died first, so run nothing)
    wait = "" if go_fd is None else f"read -r -u {go_fd} _ || exit 125; exec {go_fd}<&- ; "
    return (
        wait
        + registration(guardian_fd)
        + preamble
        + f'__runbook_cmd=${COMMAND_VAR}; unset {COMMAND_VAR}; eval "$__runbook_cmd"'
    )


def spawn(inputs: PlacedValues, cwd: str | None) -> tuple[subprocess.Popen[bytes], str | None]:
    """Start the step's Bash, contained (containment.py), with its values (``inputs``: the
    environment, and memfds for the large ones): the process and its cgroup (cgroup mode).
    Raises OSError when Bash cannot start or cannot be contained."""
    box = containment.current()
    if box.mode == containment.SUBREAPER:
        containment.become_subreaper()
    guardian_fd = GUARDIAN.fd()
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


def end_step(proc: subprocess.Popen[bytes], cgroup: str | None) -> None:
    """Kill every process of the step: its group, its cgroup, or (subreaper) whatever the
    step left to this process; then reap the step's Bash and release it from the guardian."""
    killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        containment.kill_cgroup(cgroup)
    proc.wait()
    since = _live_steps.pop(proc.pid, 0)
    if cgroup is not None:
        containment.remove_cgroup(cgroup)
    elif containment.current().mode == containment.SUBREAPER:
        keep = set(_live_steps)
        if GUARDIAN.proc is not None:
            keep.add(GUARDIAN.proc.pid)
        containment.kill_adopted(keep, proc.pid, since)


def signal_step(pgid: int, sig: int) -> None:
    """Signal the step whose process group is ``pgid``; SIGKILL ends its cgroup as well
    (the lease fence: processes that left the group must die too)."""
    killpg(pgid, sig)
    if sig == signal.SIGKILL:
        cgroup = containment.current().step_cgroup(pgid)
        if cgroup is not None:
            containment.kill_cgroup(cgroup)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the step's process group, then SIGKILL it after ``grace`` seconds."""
    killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    killpg(proc.pid, signal.SIGKILL)


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
