"""Waiting for a step: its output read as it comes, its timeout, cancel and hand-back."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable

from ..store.events import FailureReason
from .outputstream import OutputStream
from .stepprocess import stop_group

Tick = Callable[[], "bool | str"]  # truthy when the step must stop: True (cancel) or a reason
HANDBACK = "handback"


def supervise(
    proc: subprocess.Popen[bytes],
    streams: dict[int, OutputStream],
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
                    stop_group(proc, kill_grace)
                    return FailureReason.TIMEOUT
                if now >= next_tick:
                    next_tick = now + tick_interval
                    for stream in streams.values():
                        stream.idle()
                    verdict = tick() if tick is not None else False
                    if verdict:
                        stop_group(proc, kill_grace)
                        return HANDBACK if verdict == HANDBACK else FailureReason.CANCELLED
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
