"""Small conversions shared by the store's modules (Redis replies, timestamps)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..redaction import redact


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch() -> float:
    return datetime.now(UTC).timestamp()


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _decode(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in mapping.items()}


def _describe(exc: Exception) -> str:
    """An error message without credentials (redis-py messages can include the URL)."""
    return redact(str(exc))
