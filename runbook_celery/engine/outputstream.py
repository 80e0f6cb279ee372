"""A step's stdout and stderr as lines: secrets masked, lines bounded, a tail kept in memory."""

from __future__ import annotations

import os
import selectors
import time
from collections import deque
from collections.abc import Callable

from ..plan.masking import Masker, StreamMasker

LINE_LIMIT = 8192  # characters kept of one log line
TAIL_LINES = 200  # lines of each stream kept in memory

OnLine = Callable[[str, str], None]  # (stream name, line)


class OutputStream:
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


def drain(streams: dict[int, OutputStream], limit: float = 2.0) -> None:
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
