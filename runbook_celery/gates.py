"""Operator control (pause/resume, approvals, decisions, concurrency groups): kept importable
from here; the transitions live with the rest of the store (``store/gates.py``, ``store/lua/``)."""

from __future__ import annotations

from .store.gates import Gates

__all__ = ["Gates"]
