"""The store's Lua scripts: read once from ``lua/*.lua``, composed, registered with redis-py.

A script is its libraries followed by its own file, joined in the order ``PARTS`` gives,
with the stream caps and the event types the global stream leaves to the run streams
declared as Lua locals in front of the prelude (that is the only generated text). Each
``.lua`` file's header says which KEYS and ARGV it takes, which keys it derives from them
and what it returns.
"""

from __future__ import annotations

import functools
from importlib.resources import files

import redis
from redis.commands.core import Script

from ..definition.vocabulary import RUN_STREAM_ONLY_EVENTS

GLOBAL_EVENTS_MAXLEN = 100_000
RUN_EVENTS_MAXLEN = 100_000

_PRELUDE = ("constants", "prelude")
_HAND_ON = (*_PRELUDE, "hand_on_lib")

# script -> the libraries it is built on, in order (its own file follows them)
PARTS: dict[str, tuple[str, ...]] = {
    "claim": _PRELUDE,
    "renew": _PRELUDE,
    "finish": (*_PRELUDE, "finish_lib"),
    "finish_hand_on": (*_HAND_ON, "finish_lib"),
    "finish_send": (*_PRELUDE, "finish_lib"),
    "retry": _PRELUDE,
    "handback": _PRELUDE,
    "release": _PRELUDE,
    "hand_on": _HAND_ON,
    "store_result": _HAND_ON,
    "watch": _PRELUDE,
    "cancel_begin": _PRELUDE,
    "cancel_steps": _PRELUDE,
    "cancel_fanned": _PRELUDE,
    "drop_expired": (),
    "fail_over": _PRELUDE,
    "add_instances": _PRELUDE,
    "instance_ended": _PRELUDE,
    # operator gates (gates.py)
    "pause_resume": _PRELUDE,
    "open_gate": _PRELUDE,
    "await_decision": _PRELUDE,
    # sub-workflows (childruns.py)
    "await_child": _PRELUDE,
    "admit": (),
    # kombu's Redis transport (recovery.py): these read and write the broker's keys
    "restore": (),
    "queued": (),
}

LIBRARIES = ("prelude", "hand_on_lib", "finish_lib")


@functools.cache
def read(name: str) -> str:
    """The text of ``lua/<name>.lua`` as installed with the package."""
    if name == "constants":
        run_only = ", ".join(f"['{t}'] = true" for t in sorted(RUN_STREAM_ONLY_EVENTS))
        return (
            f"local RUN_EVENTS_MAXLEN = {RUN_EVENTS_MAXLEN}\n"
            f"local GLOBAL_EVENTS_MAXLEN = {GLOBAL_EVENTS_MAXLEN}\n"
            f"local RUN_STREAM_ONLY = {{{run_only}}}\n"
        )
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def source(name: str) -> str:
    """The full source Redis runs for script ``name``: its libraries, then its own file."""
    return "".join(read(part) for part in (*PARTS[name], name))


def prelude() -> str:
    """The shared helpers with their constants (a script body may follow it)."""
    return "".join(read(part) for part in _PRELUDE)


def register(client: redis.Redis, name: str) -> Script:
    """A redis-py ``Script`` (EVALSHA, loaded on first use) for script ``name``."""
    return client.register_script(source(name))
