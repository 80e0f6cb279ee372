"""Small conversions shared by the store's modules (Redis replies, timestamps)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from ..core.redaction import redact

# One stream entry as the store's clients receive it: (id, fields).
StreamEntry = tuple[bytes | str, dict[bytes | str, bytes | str]]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch() -> float:
    return datetime.now(UTC).timestamp()


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _decode(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in mapping.items()}


def range_reply(reply: object) -> list[StreamEntry]:
    """XRANGE's or XREVRANGE's reply, typed as it is.

    redis-py types it as possibly None, with an optional id and fields in each entry: it
    shares the entry type with XCLAIM, where a deleted entry has no fields. XRANGE always
    replies a list of complete entries.
    """
    return cast("list[StreamEntry]", reply)


def read_reply(reply: object) -> list[tuple[bytes | str, list[StreamEntry]]]:
    """XREAD's or XREADGROUP's reply, ``[(stream, entries), ...]``; empty when BLOCK timed out.

    The store's clients speak RESP2 (redis-py's default), which replies this shape or None;
    redis-py's type is the union with RESP3's dict shape, which they never receive.
    """
    return cast("list[tuple[bytes | str, list[StreamEntry]]]", reply or [])


def _describe(exc: Exception) -> str:
    """An error message without credentials (redis-py messages can include the URL)."""
    return redact(str(exc))
