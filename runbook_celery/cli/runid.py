"""Run ids on the command line: a full id, or a unique prefix of one, as git takes commits.

Every command that takes a run id resolves it here before doing anything else. A full id
that exists is taken as it is (one EXISTS). Anything else of at least ``MIN_PREFIX``
characters is looked up in the runs index (a sorted set scored by creation time, so not
ordered by id: ZRANGEBYLEX cannot serve it) with ZSCAN MATCH ``prefix*``, which Redis
filters server-side, stopping once two candidates prove the prefix ambiguous. A unique
match is the run; two or more exit 2 listing them; none exits 4.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click
import redis

from ..core.errors import BackendUnavailable, InvalidParams, RunNotFound
from ..core.settings import get_settings
from ..store import RunStore
from ..store.redisconn import get_client, redact

MIN_PREFIX = 4  # as git's shortest abbreviation: short enough to type, long enough to mean one
MAX_LISTED = 10  # candidates named when a prefix is ambiguous
SCAN_COUNT = 1000  # index entries Redis looks at per ZSCAN round trip
# what a run id may be (uuid4 hex today): never ':', which would name another key of a run
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_GLOB_SPECIAL = "\\*?[]^"


class AmbiguousRunId(InvalidParams):
    """A run-id prefix matches more than one run (exit 2); carries the candidates."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix = prefix
        self.candidates = candidates
        more = "" if len(candidates) <= MAX_LISTED else "\n  ..."
        listed = "\n".join(f"  {c}" for c in candidates[:MAX_LISTED])
        super().__init__(
            f"run id prefix {prefix!r} is ambiguous; it matches:\n{listed}{more}\n"
            "type more characters of the id"
        )


def _store() -> RunStore:

    settings = get_settings()
    return RunStore(get_client(settings), settings.prefix, settings.retention)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


def resolve_run_id(store: RunStore, text: str) -> str:
    """The run id ``text`` names: itself if such a run exists, else the one run it prefixes.

    Raises:
        RunNotFound: no run has this id or an id starting with it (exit 4).
        AmbiguousRunId: several runs start with it (exit 2).
        InvalidParams: not an id, and too short to be a prefix (exit 2).
        BackendUnavailable: Redis did not answer (exit 3).
    """
    if not RUN_ID_RE.match(text):
        raise RunNotFound(text)
    try:
        if store.r.exists(store.keys.run(text)):
            return text
        if len(text) < MIN_PREFIX:
            raise InvalidParams(
                f"run {text!r} not found, and a prefix of a run id needs at least "
                f"{MIN_PREFIX} characters"
            )
        candidates: list[str] = []
        pattern = _glob_escape(text) + "*"
        for member, _score in store.r.zscan_iter(
            store.keys.runs_index, match=pattern, count=SCAN_COUNT
        ):
            run_id = member.decode() if isinstance(member, bytes) else str(member)
            if run_id not in candidates:
                candidates.append(run_id)
            if len(candidates) > MAX_LISTED:
                break
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot look up run {text!r}: {redact(str(exc))}") from None
    if not candidates:
        raise RunNotFound(text)
    if len(candidates) > 1:
        raise AmbiguousRunId(text, sorted(candidates))
    return candidates[0]


def _callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None or ctx.resilient_parsing:
        return value
    return resolve_run_id(_store(), value)


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def run_id_argument(name: str = "run_id", **kwargs: Any) -> _Decorator:
    """``@click.argument`` for a run id that also takes a unique prefix of one."""
    return click.argument(name, callback=_callback, **kwargs)


def run_id_option(*decls: str, **kwargs: Any) -> _Decorator:
    """``@click.option`` for a run id that also takes a unique prefix of one."""
    return click.option(*decls, callback=_callback, **kwargs)
