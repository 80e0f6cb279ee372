"""What every part of the store shares: the client, the key names, the registered scripts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from .keys import Keys
from .records import Successor
from .scripts import register


class StoreBase:
    """One instance per Redis client and key prefix; the parts of ``RunStore`` build on it."""

    def __init__(self, client: redis.Redis, prefix: str = "runbook", retention: int = 7 * 86400):
        self.r = client
        self.keys = Keys(prefix)
        self.retention = retention
        self.last_admitted: list[str] = []
        # one attribute per script (lua/<name>.lua); tests call a few of them directly
        self._start = register(client, "claim")
        self._finish = register(client, "finish")
        self._finish_hand_on = register(client, "finish_hand_on")
        self._finish_send = register(client, "finish_send")
        self._retry = register(client, "retry")
        self._handback = register(client, "handback")
        self._cancel_begin = register(client, "cancel_begin")
        self._cancel_steps = register(client, "cancel_steps")
        self._cancel_fanned = register(client, "cancel_fanned")
        self._add_instances = register(client, "add_instances")
        self._instance_ended = register(client, "instance_ended")
        self._fail_over = register(client, "fail_over")
        self._drop_expired = register(client, "drop_expired")
        self._refresh = register(client, "renew")
        self._release = register(client, "release")
        self._hand_on = register(client, "hand_on")
        self._store_result = register(client, "store_result")
        self._watch = register(client, "watch")

    def hand_on_arguments(
        self,
        run_id: str,
        step_id: str,
        successors: Iterable[Successor],
        seconds: float,
        ended: Iterable[str] = (),
    ) -> tuple[list[Any], list[Any]]:
        """HAND ON's KEYS and ARGV (hand_on_lib.lua), for the scripts that end with it."""
        k = self.keys
        succ = list(successors)
        also = [f"{run_id}|{s}" for s in ended]
        keys: list[Any] = [k.leases]
        args: list[Any] = [f"{run_id}|{step_id}", seconds, len(succ)]
        for s in succ:
            keys += [k.step(run_id, s.step), k.arrived(run_id, s.step)]
            args += [f"{run_id}|{s.step}", s.needs]
        args += [len(also), *also]
        return keys, args
