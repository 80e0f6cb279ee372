"""The run snapshot's format version, checked wherever a snapshot is read.

A snapshot is written once, at trigger time, by the process that submits the run, and read
for the whole run by every worker (and by clients showing it). In a fleet being upgraded
those can be different releases: a newer client may record a snapshot an older worker
cannot read. Each snapshot says its format version; a reader that does not know it
refuses it with ``UnsupportedSnapshot`` rather than guessing (an older snapshot, or one
from before versions were written, is read as version 1).

Bump ``SNAPSHOT_VERSION`` when a change to ``build_snapshot`` would make an older worker
misread a snapshot (a key whose meaning changed, or a new key it must not ignore).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import UnsupportedSnapshot

SNAPSHOT_VERSION = 1


def checked_snapshot(run_id: str, snapshot: Mapping[str, Any]) -> None:
    """Raise ``UnsupportedSnapshot`` unless this code knows the snapshot's format version."""
    version = snapshot.get("version", 1)
    if type(version) is not int or not 1 <= version <= SNAPSHOT_VERSION:
        raise UnsupportedSnapshot(run_id, version, SNAPSHOT_VERSION)
