"""Dead letters: broker messages a worker refused, kept for an operator to look at.

A message a worker cannot decode, or one that does not match the signature of our tasks, is
moved here instead of stopping the worker (``poison.py``). The list lives in the run store's
Redis under ``PREFIX:deadletters``, newest first, capped in entries and in bytes per entry,
so a flood of garbage cannot fill Redis. ``runbook-celery dead-letters`` shows and purges it.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from .keys import Keys

DEAD_LETTER_LIMIT = 1000  # entries kept; the oldest go first
BODY_LIMIT = 16 * 1024  # bytes of a message body kept per entry
HEADERS_LIMIT = 4 * 1024  # characters of the headers (as JSON) kept per entry
REASON_LIMIT = 1000  # characters of the reason kept per entry


@dataclass(frozen=True)
class DeadLetter:
    """One refused message: what arrived, on which queue, when, and why it was refused."""

    time: str  # ISO 8601 UTC
    queue: str | None
    reason: str
    body: str  # the raw body, as text if it was UTF-8, else base64
    body_encoding: Literal["utf-8", "base64"]
    size: int  # bytes of the whole body as received
    truncated: bool  # body holds only the first BODY_LIMIT bytes
    task: str | None = None  # the task name the message claimed, if any
    task_id: str | None = None
    headers: str | None = None  # the message headers as JSON (capped), if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raw_body(self) -> bytes:
        """The stored (possibly truncated) body as bytes."""
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")

    @classmethod
    def from_json(cls, text: bytes | str) -> DeadLetter:
        data = json.loads(text)
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


def make_dead_letter(
    raw: bytes | str | None,
    reason: str,
    queue: str | None,
    headers: Mapping[str, Any] | None = None,
) -> DeadLetter:
    """A capped entry for ``raw`` (and the task it claims to be); nothing in it is run."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else (raw or b"")
    kept = data[:BODY_LIMIT]
    encoding: Literal["utf-8", "base64"]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    else:  # a cut may split a character: drop the partial one at the end
        body, encoding = kept.decode("utf-8", "ignore"), "utf-8"
    return DeadLetter(
        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        queue=_short(queue),
        reason=printable(reason)[:REASON_LIMIT],
        body=body,
        body_encoding=encoding,
        size=len(data),
        truncated=len(data) > BODY_LIMIT,
        task=_short(headers.get("task")) if headers else None,
        task_id=_short(headers.get("id")) if headers else None,
        headers=_headers_text(headers),
    )


def printable(text: str) -> str:
    """``text`` with control characters escaped: what a sender wrote must not drive a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(value: Any, limit: int = 256) -> str | None:
    """A header value as bounded, printable text (hostile messages put anything anywhere)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return printable(text[:limit])


def _headers_text(headers: Mapping[str, Any] | None) -> str | None:
    if headers is None:
        return None
    try:
        text = json.dumps(headers, default=repr, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(headers)
    return text[:HEADERS_LIMIT]


class DeadLetters:
    """The dead-letter list of one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, limit: int = DEAD_LETTER_LIMIT) -> None:
        self.r = client
        self.key = Keys(prefix).dead_letters
        self.limit = limit

    def add(self, letter: DeadLetter) -> None:
        """Push one entry and drop the oldest beyond the cap, in one transaction."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, json.dumps(letter.to_dict()))
            pipe.ltrim(self.key, 0, self.limit - 1)
            pipe.execute()

    def list(self) -> list[DeadLetter]:
        """Every entry, newest first."""
        return [DeadLetter.from_json(item) for item in self.r.lrange(self.key, 0, -1)]

    def purge(self) -> builtins.list[DeadLetter]:  # `list` here is the method above
        """Remove every entry and return what was removed (read and delete are atomic)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key, 0, -1)
            pipe.delete(self.key)
            items, _ = pipe.execute()
        return [DeadLetter.from_json(item) for item in items]
