"""Counts Redis round trips per process: every redis-py send, with its first command name.

A round trip here is one ``send_packed_command`` (a single command, or a whole pipeline or
MULTI sent at once), the unit that costs a network wait. Each process appends one line per
send (the command's name) to ``<dir>/<pid>.<ppid>.log`` in ``BENCH_ROUNDTRIP_DIR``; a forked
process (a Celery pool child) opens its own file on its first send. An O_APPEND write per
send is cheap and survives any way the process ends (billiard's children end in
``os._exit``), which is what counting needs: nothing is timed with this on.

    python scripts/bench_roundtrips.py -A APP worker ...   # celery, counted
"""

from __future__ import annotations

import os
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "BENCH_ROUNDTRIP_DIR"
# comma-separated command names whose callers are written to <dir>/<pid>.trace (to find
# where a round trip comes from)
TRACE_ENV = "BENCH_ROUNDTRIP_TRACE"

_fd: int | None = None
_pid: int | None = None
_traced = frozenset(filter(None, os.environ.get(TRACE_ENV, "").upper().split(",")))


def _name(command: Any) -> bytes:
    """The first command's name in a packed command (``*N\\r\\n$len\\r\\nNAME\\r\\n...``)."""
    first = command if isinstance(command, bytes | str) else (command[0] if command else b"")
    if isinstance(first, str):
        first = first.encode()
    parts = first.split(b"\r\n", 3)
    return parts[2].upper() if len(parts) > 2 else b"?"


def _log(command: Any) -> None:
    global _fd, _pid
    pid = os.getpid()
    if pid != _pid:
        path = Path(os.environ[ENV]) / f"{pid}.{os.getppid()}.log"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _pid = pid
    assert _fd is not None
    name = _name(command)
    os.write(_fd, name + b"\n")
    if name.decode() in _traced:
        frames = traceback.format_stack(limit=14)[:-2]
        with open(Path(os.environ[ENV]) / f"{pid}.trace", "a") as f:
            f.write(f"--- {name.decode()}\n{''.join(frames)}")


def install() -> None:
    """Count every send of this process (and of the processes it forks) from now on."""
    if not os.environ.get(ENV):
        return
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        _log(command)
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def read(directory: Path) -> dict[int, tuple[int, Counter[str]]]:
    """{pid: (ppid, round trips by first command name)} of every counted process."""
    out: dict[int, tuple[int, Counter[str]]] = {}
    for path in directory.glob("*.log"):
        pid, ppid = (int(p) for p in path.stem.split("."))
        out[pid] = (ppid, Counter(path.read_text().split()))
    return out


if __name__ == "__main__":
    install()
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    main()
