"""``output: NAME``: a step's stdout captured as one of its outputs (Dagu's ``output:``).

The capture sees the lines the log sees (each at most ``outputstream.LINE_LIMIT`` characters),
so it costs no second pipe; its total is held to the output limit (``RUNBOOK_OUTPUT_LIMIT``)
like ``$RUNBOOK_OUTPUT``, and the text is trimmed of surrounding whitespace, as Dagu does.
"""

from __future__ import annotations

from collections.abc import Callable

from ..store.events import FailureReason
from .runner import BashResult

OnLine = Callable[[str, str], None]


class StdoutCapture:
    """Collects stdout lines up to ``limit`` bytes; past it, the step's outputs are too large."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.size = 0
        self.overflow = False

    def tee(self, on_line: OnLine) -> OnLine:
        """``on_line`` that also keeps stdout lines."""

        def both(stream: str, line: str) -> None:
            if stream == "stdout" and not self.overflow:
                self.size += len(line.encode("utf-8", "replace")) + 1
                if self.size > self.limit:
                    self.overflow = True
                    self.lines = []
                else:
                    self.lines.append(line)
            on_line(stream, line)

        return both

    def into(self, result: BashResult, name: str) -> None:
        """Set the output ``name`` of a step that succeeded, or fail it when stdout was too
        large. An explicit ``NAME=`` in ``$RUNBOOK_OUTPUT`` wins over the capture."""
        if not result.ok:
            return
        if self.overflow:
            result.reason = FailureReason.OUTPUT_TOO_LARGE
            result.message = (
                f"stdout captured as output {name!r} is more than the {self.limit}-byte limit "
                "(RUNBOOK_OUTPUT_LIMIT)"
            )
            return
        result.outputs.setdefault(name, "\n".join(self.lines).strip())
