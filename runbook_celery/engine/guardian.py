"""The guardian: one Bash per worker pool process that kills its steps if the process dies.

Each step's Bash registers its process group with the guardian (``+PGID``) through the
guardian's pipe before it runs anything, then closes its copy of the pipe; the pool process
unregisters the group (``-PGID``) once the step is over and its group has been killed. The
guardian blocks reading that pipe, whose write end only the pool process holds: when the
pool process dies, even by SIGKILL, the guardian reads end-of-file and SIGKILLs every group
still registered. It also keeps the lease fence (``=PGID T``): a deadline kept outside the
pool process, so it holds while that process is stopped or hung. One long-lived guardian
per process replaces a lifeline subshell per step, which cost a fork on every step.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

from . import containment

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


def registration(guardian_fd: int) -> str:
    """Bash that registers the running shell's process group with the guardian, then closes
    its copy of the pipe. SIGPIPE ignored and ``|| :`` so that a guardian that is gone
    cannot kill or fail the step (``-e`` is on)."""
    return (
        f"trap '' PIPE; echo \"+$$\" >&{guardian_fd} 2>/dev/null || : ; trap - PIPE; "
        f"exec {guardian_fd}>&- ; "
    )


class Guardian:
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


GUARDIAN = Guardian()
os.register_at_fork(after_in_child=GUARDIAN.after_fork_in_child)
