"""The environment a step's Bash starts with, and its large values passed as data.

Linux refuses to start a program when one environment string is longer than
MAX_ARG_STRLEN (128 KiB) or all of them together exceed ARG_MAX (E2BIG, "Argument list too
long"). A step's command and values (outputs of up to RUNBOOK_OUTPUT_LIMIT, params, `run:`
text) can be larger, so those go through memfds instead: the wrapper reads each into a
Bash variable of the same name before it evaluates the command, so "$NAME" expands to the
exact value. Such a variable is not exported: a program the step starts could not be
given it either (every exec would fail with E2BIG).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

COMMAND_VAR = "RUNBOOK_COMMAND__"  # the step's command, which the wrapper evaluates
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
