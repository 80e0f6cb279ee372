"""What a notifier reads and records in Redis for one event, besides the event stream:
the run's ``notify:`` rules (from its snapshot), the run itself for the message, the URLs an
earlier notifier already did, whether an entry is still ours, and each URL's outcome as an
event of the run (``notification_sent``/``notification_failed``)."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..core.errors import RunNotFound
from ..definition.notifyconfig import NotifyEvent, scheme_of
from ..plan.runrecord import RunRecord
from ..store import GLOBAL_EVENTS_MAXLEN, RUN_EVENTS_MAXLEN, RunStore, now_iso
from ..store.codec import range_reply
from ..store.events import EventType
from .notifysend import Outcome

log = logging.getLogger("runbook_celery.notify")

# KEYS: run_events, global_events   ARGV: run maxlen, global maxlen, field, value, ...
# A run that has expired gets no stream back (it would never expire again).
_RECORD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""

# KEYS: stream   ARGV: group, entry id, consumer
# Renews our hold on an entry (its idle time) if it is still ours; 0 when another
# notifier has taken it over.
_STILL_MINE_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p[1] and p[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Rules:
    """A run's ``notify:`` (from its snapshot), with what its messages must not show."""

    workflow: str
    rules: Sequence[Mapping[str, Any]]
    secret_names: Sequence[str]


NO_RULES = Rules("", (), ())


class NotificationLog:
    """A notifier's reads and writes of runs: ``group`` and ``consumer`` name it in the
    consumer group of ``stream``, the global event stream."""

    def __init__(
        self, client: redis.Redis, store: RunStore, stream: str, group: str, consumer: str
    ) -> None:
        self.r = client
        self.store = store
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._record_script = client.register_script(_RECORD_LUA)
        self._still_mine_script = client.register_script(_STILL_MINE_LUA)
        self._rules_cache: OrderedDict[str, Rules] = OrderedDict()
        self._cache_lock = threading.Lock()

    def rules(self, run_id: str) -> Rules:
        """The run's notify rules from its snapshot, cached (a run's snapshot never changes)."""
        with self._cache_lock:  # several senders use the cache
            if run_id in self._rules_cache:
                self._rules_cache.move_to_end(run_id)
                return self._rules_cache[run_id]
        raw = self.r.hget(self.store.keys.run(run_id), "snapshot")
        rules = NO_RULES
        if raw:
            snapshot = json_object(raw)
            rules = Rules(
                str(snapshot.get("workflow", "")),
                tuple(snapshot.get("notify") or ()),
                tuple(snapshot.get("secrets") or ()),
            )
        with self._cache_lock:
            self._rules_cache[run_id] = rules
            if len(self._rules_cache) > 1024:
                self._rules_cache.popitem(last=False)
        return rules

    def run_record(self, run_id: str) -> RunRecord | None:
        try:
            return self.store.get_run(run_id)
        except RunNotFound:
            return None  # expired meanwhile: the message says what the event says

    def done(self, run_id: str, entry_id: str) -> set[str]:
        """URLs of this event whose outcome an earlier notifier recorded before it died."""
        since = f"{entry_id.split('-', 1)[0]}-0"
        entries = range_reply(
            self.r.xrange(self.store.keys.run_events(run_id), min=since, count=10_000)
        )
        out = set()
        for _eid, raw in entries:
            fields = decode(raw)
            if fields.get("source") == entry_id and fields.get("target"):
                out.add(fields["target"])
        return out

    def still_mine(self, entry_id: str) -> bool:
        """Whether this consumer still holds the entry (renewing its hold); False when another
        notifier has taken it over."""
        args = [self.group, entry_id, self.consumer]
        return bool(self._still_mine_script(keys=[self.stream], args=args))

    def record_outcome(
        self,
        event: Mapping[str, str],
        on: NotifyEvent,
        entry_id: str,
        target: str,
        url: str,
        outcome: Outcome,
        workflow: str,
    ) -> None:
        run_id = event["run_id"]
        fields = {
            "type": EventType.NOTIFICATION_SENT if outcome.sent else EventType.NOTIFICATION_FAILED,
            "run_id": run_id,
            "workflow": event.get("workflow") or workflow,
            "ts": now_iso(),
            "on": on.value,
            "service": scheme_of(url) or "secret",
            "target": target,
            "source": entry_id,
            "attempts": str(outcome.attempts),
        }
        if event.get("step"):
            fields["step"] = event["step"]
        if outcome.error:
            fields["error"] = outcome.error
            log.warning(
                "notification of run %s (%s) to %s (%s://) failed: %s",
                run_id,
                on.value,
                target,
                fields["service"],
                outcome.error,
            )
        args: list[str] = [str(RUN_EVENTS_MAXLEN), str(GLOBAL_EVENTS_MAXLEN)]
        for key, value in fields.items():
            args += [key, str(value)]
        self._record_script(keys=[self.store.keys.run_events(run_id), self.stream], args=args)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def json_object(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
