"""Masking the values of ``secrets:`` as ``***`` wherever a step's output is recorded.

Output is masked as a byte stream, before it is cut into lines and before a long line is
truncated, so a secret straddling a cut or a line break is masked whole. Besides the value
itself, these encodings of it are masked (for values of at least ``MIN_ENCODED_LENGTH``
bytes; shorter ones would mask ordinary text):

- base64, standard and URL-safe alphabets, at each of the three alignments the value can
  have inside a longer base64 stream (``echo "$TOKEN" | base64``). Only the characters that
  depend on the value alone are masked, so up to two characters at each end, which mix the
  value's bits with its neighbours', stay visible;
- hex, lower and upper case (``xxd -p``, ``od``-free dumps);
- URL encoding: every character percent-encoded, or the usual ``quote``/``quote_plus``
  forms, with upper- or lower-case escapes.

Each form may also be split by line breaks (``\\n`` or ``\\r\\n``) between any two of its
characters: ``fold``, ``base64``'s 76-column wrapping and ``xxd -p`` produce that. The line
break inside a masked value is removed with it, joining the two lines.

Limits (the threat is an honest step leaking by accident; a hostile step can always print
a secret some other way, e.g. reversed):
- other encodings, and forms interleaved with anything but line breaks (``xxd`` with spaces);
- a stream holds back a possible beginning of a secret until the next output shows whether
  it is one; when the step prints nothing more for a supervision tick, what was held is let
  go unmasked-as-a-whole (``StreamMasker.idle``), so a value written in two parts with a
  pause between them is not masked.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = b"***"
MASK_TEXT = MASK.decode()
MIN_ENCODED_LENGTH = 6  # bytes; shorter values are masked only as written

_CR, _LF = 13, 10
_SEP = rb"(?:\r?\n)?"
_PERCENT = re.compile(rb"%[0-9A-F]{2}")


def encoded_forms(secret: str) -> set[bytes]:
    """What ``secret`` looks like in output: as written, and encoded (see module doc)."""
    raw = secret.encode("utf-8", "surrogateescape")
    forms = {raw}
    if len(raw) < MIN_ENCODED_LENGTH:
        return forms
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.update(_base64_middles(raw, encode))
    hexed = binascii.hexlify(raw)
    forms.update({hexed, hexed.upper()})
    for text in (
        "".join(f"%{b:02X}" for b in raw),
        quote(raw, safe=""),  # bytes: an environment value may hold undecodable bytes
        quote(raw),
        quote_plus(raw, safe=""),
    ):
        upper = text.encode("ascii")
        lower = _PERCENT.sub(lambda m: m.group().lower(), upper)
        forms.update({upper, lower})
    return {f for f in forms if f}


def _base64_middles(raw: bytes, encode: Any) -> Iterable[bytes]:
    """The characters of ``raw``'s base64 that do not depend on its neighbours, for the
    value starting 0, 1 or 2 bytes into a 3-byte group.

    Character ``i`` of base64 covers bits ``6i .. 6i+6``: with ``k`` bytes before the value,
    it depends on the value alone when ``6i >= 8k`` and ``6i + 6 <= 8(k + len)``.
    """
    for k in range(3):
        text = encode(bytes(k) + raw + bytes(2))
        start = -(-8 * k // 6)
        end = 8 * (k + len(raw)) // 6
        yield text[start:end]


class Masker:
    """Masks a fixed set of secret values in text, bytes, or (``stream()``) a byte stream."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        tolerant: set[bytes] = set()  # may be split by line breaks
        exact: set[bytes] = set()
        for value in values:
            forms = encoded_forms(value)
            if len(value.encode("utf-8", "surrogateescape")) >= MIN_ENCODED_LENGTH:
                tolerant |= forms
            else:
                exact |= forms
        exact -= tolerant
        self.forms: list[tuple[bytes, bool]] = sorted(
            [(f, True) for f in tolerant] + [(f, False) for f in exact],
            key=lambda item: len(item[0]),
            reverse=True,  # at one position, the longest form wins
        )
        self.pattern: re.Pattern[bytes] | None = None
        if self.forms:
            # the look-ahead lets the engine skip, at one test, positions no form starts at
            starts = b"".join(re.escape(bytes([b])) for b in sorted({f[0] for f, _ in self.forms}))
            alternatives = b"|".join(_regex(f, t) for f, t in self.forms)
            self.pattern = re.compile(b"(?=[" + starts + b"])(?:" + alternatives + b")")
        # the longest a match can be: each gap between two bytes may hold "\r\n"
        self.longest = max((3 * len(f) - 2 if t else len(f) for f, t in self.forms), default=0)
        self.by_first: dict[int, list[tuple[bytes, bool]]] = {}
        for form, is_tolerant in self.forms:
            self.by_first.setdefault(form[0], []).append((form, is_tolerant))

    def __bool__(self) -> bool:
        return self.pattern is not None

    def mask_bytes(self, data: bytes) -> bytes:
        return self.pattern.sub(MASK, data) if self.pattern is not None else data

    def mask(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        if self.pattern is None or not text:
            return text
        data = text.encode("utf-8", "surrogateescape")
        return self.mask_bytes(data).decode("utf-8", "surrogateescape")

    def mask_value(self, value: Any) -> Any:
        """Strings inside a JSON-like value (outputs, lists of lines) masked."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value

    def stream(self) -> StreamMasker:
        return StreamMasker(self)

    def may_start_at(self, data: bytes, start: int) -> bool:
        """Whether ``data[start:]`` is the beginning (not the whole) of some form."""
        candidates = self.by_first.get(data[start], ())
        return any(_is_prefix(data, start, form, tolerant) for form, tolerant in candidates)


class StreamMasker:
    """Masks one output stream fed in chunks: what ``feed`` returns is safe to show.

    The end of the data seen so far is held back while it could be the beginning of a
    secret (a match cannot be decided before its last byte has arrived).
    """

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.held = b""
        self.fresh = False

    def feed(self, data: bytes) -> bytes:
        m = self.masker
        if m.pattern is None:
            return data
        buf = self.held + data
        self.fresh = True
        cut = self._hold_from(buf, 0)
        out: list[bytes] = []
        pos = 0
        for match in m.pattern.finditer(buf):
            if match.start() >= cut:
                break
            out += [buf[pos : match.start()], MASK]
            pos = match.end()
        if pos > cut:  # a whole match ran past where a new one might begin
            cut = self._hold_from(buf, pos)
        out.append(buf[pos:cut])
        self.held = buf[cut:]
        return b"".join(out)

    def idle(self) -> bytes:
        """Called when time passes: what was held through a whole quiet period, masked."""
        if self.held and not self.fresh:
            return self.finish()
        self.fresh = False
        return b""

    def finish(self) -> bytes:
        """The end of the stream: whatever is held, masked."""
        held, self.held = self.held, b""
        return self.masker.mask_bytes(held)

    def _hold_from(self, buf: bytes, start: int) -> int:
        """The first position, at or after ``start``, from which the rest of ``buf`` may be
        the beginning of a secret; ``len(buf)`` when there is none."""
        m = self.masker
        for p in range(max(start, len(buf) - m.longest), len(buf)):
            if buf[p] in m.by_first and m.may_start_at(buf, p):
                return p
        return len(buf)


def _regex(form: bytes, tolerant: bool) -> bytes:
    parts = [re.escape(form[i : i + 1]) for i in range(len(form))]
    return (_SEP if tolerant else b"").join(parts)


def _is_prefix(data: bytes, start: int, form: bytes, tolerant: bool) -> bool:
    """``data[start:]`` is a proper beginning of ``form`` (with line breaks if tolerant)."""
    i, j, n = start, 0, len(data)
    while i < n:
        if j == len(form):
            return False
        if data[i] == form[j]:
            i += 1
            j += 1
            continue
        if not tolerant or j == 0:
            return False
        if data[i] == _CR and (i + 1 == n or data[i + 1] == _LF):
            i += 1  # "\r" at the very end may be the start of "\r\n"
            if i == n:
                return True
        if data[i] != _LF:
            return False
        i += 1
        if i < n and data[i] != form[j]:
            return False  # one line break between two bytes, as the pattern allows
    return j < len(form)
