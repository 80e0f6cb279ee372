"""Running steps as another, unprivileged user (``runbook-celery worker --step-user NAME``).

The worker stays root, so it can read its credentials file, manage cgroups and signal its
steps; each step's Bash is switched to the step user by subprocess between fork and exec
(no ``preexec_fn``: safe with the worker's threads). A step running as that user cannot
read the worker's ``/proc/PID/environ``, ``maps`` or ``mem``, nor a credentials file of
mode 0600, nor signal the worker.
"""

from __future__ import annotations

import os
import pwd
import tempfile
from dataclasses import dataclass
from typing import TypedDict

# what a root worker needs to run steps as another user: switch to it, hand it its output
# directory, and signal its processes (cgroup.kill needs no capability)
CAPABILITIES = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}


@dataclass(frozen=True)
class StepUser:
    """The unprivileged user steps run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> StepUser:
        """Raises ValueError: no such user, or a privileged one."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"there is no user {name!r} on this machine") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ValueError(f"{name!r} is root or in group root; name an unprivileged user")
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != 0)
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


_current: StepUser | None = None


def use(user: StepUser | None) -> None:
    """Run every later step of this process and of its forks (the pool) as ``user``;
    called before the worker starts, while no step has run."""
    global _current
    _current = user


def current() -> StepUser | None:
    return _current


def missing_capabilities() -> list[str]:
    """Which of ``CAPABILITIES`` this process lacks (e.g. under a systemd
    CapabilityBoundingSet or a container's cap_drop)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        line = next(x for x in fh if x.startswith("CapEff:"))
    effective = int(line.split()[1], 16)
    return [name for name, bit in CAPABILITIES.items() if not effective >> bit & 1]


class UserSwitch(TypedDict, total=False):
    """``subprocess.Popen``'s arguments that run the child as another user."""

    user: int
    group: int
    extra_groups: list[int]


def popen_args(env: dict[str, str]) -> UserSwitch:
    """Popen arguments that switch the child to the step user before it execs; sets the
    user's HOME, USER and LOGNAME in ``env``. Empty without a step user."""
    user = _current
    if user is None:
        return {}
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}


def make_output_dir() -> str:
    """A private (0700) directory for $RUNBOOK_OUTPUT files. With a step user: one of that
    user's inside one of root's (0711), so a step can neither list the outer one nor move
    its own away (to swap in a link)."""
    top = tempfile.mkdtemp(prefix=f"runbook-{os.getpid()}-")
    user = _current
    if user is None:
        return top
    os.chmod(top, 0o711)
    inner = os.path.join(top, "steps")
    os.mkdir(inner, 0o700)
    os.chown(inner, user.uid, user.gid)
    return inner
