"""Sending notifications: notifiers read the global event stream and send what runs asked for.

Who sends: every worker runs one notifier thread (``NotifierStep``, a worker bootstep,
unless ``RUNBOOK_WORKER_NOTIFIER=off``), and ``runbook-celery notifier`` runs one on its
own. All of them read ``PREFIX:events`` through one Redis consumer group, so each event
goes to one notifier however many run (XREADGROUP, acknowledged with XACK once handled).
An event whose notifier died before acknowledging it is taken over by another after
``CLAIM_IDLE_MS`` (XAUTOCLAIM), which skips the URLs already recorded as done; before
each attempt a notifier checks that the event is still its own, so a slow notifier and
the one that took over do not both send.

Nothing here is on a step's path: a run never waits for a notification, and a
notification that fails changes nothing about the run. Each URL's outcome is an event of
the run: ``notification_sent`` or, after a few attempts (notifysend.py),
``notification_failed`` (service scheme and a masked error; never the URL, whose secrets
are resolved in memory only).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis
from celery import bootsteps

from ..core.errors import BackendUnavailable
from ..core.settings import Settings, get_settings, worker_environment
from ..definition.notifyconfig import NOTIFY_EVENT_OF, known_schemes
from ..store import RunStore
from ..store.codec import read_reply
from ..store.redisconn import client_for, describe_backend_error
from .notifylog import NotificationLog, decode, text
from .notifymessage import compose, masker
from .notifysend import Sender, apprise_send, deliver
from .senderpool import SenderPool

log = logging.getLogger("runbook_celery.notify")

GROUP = "notifiers"
BATCH = 10  # entries read at once when handled inline
# Most events are no notification's business (a step started or succeeded): a notifier reads
# up to READ_MAX at once, acknowledges those together (one XACK) and hands the rest to its
# senders; after a read that found events it lets GATHER_S pass, so that under load a read
# takes a batch rather than waking for every step's every event (two reads and two XACKs
# per step otherwise). A notification goes out at most GATHER_S later.
READ_MAX = 100
GATHER_S = 0.2
SENDERS = 4  # events a notifier works on at once
BLOCK_MS = 1000  # a stop is noticed within this
CLAIM_IDLE_MS = 60_000  # an entry unacknowledged this long belongs to a dead notifier
CLAIM_EVERY = 15.0  # seconds between looks for such entries
DEAD_CONSUMER_MS = 3_600_000  # a consumer silent this long, holding nothing, is removed


class Notifier:
    """One member of the notifiers' consumer group; ``run()`` serves until ``stop`` is set.

    ``run()`` sends from ``SENDERS`` threads, so one slow or unreachable URL does not hold
    back the notifications of other events; ``poll()`` and ``claim_stale()`` called
    without ``run()`` handle entries inline (tests, one-off use).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        send: Sender = apprise_send,
        name: str | None = None,
    ) -> None:
        self.r = client
        self.settings = settings
        self.store = RunStore(client, settings.prefix, settings.retention)
        self.stream = self.store.keys.global_events
        self.env = env if env is not None else worker_environment()
        self.send = send
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.runlog = NotificationLog(client, self.store, self.stream, GROUP, self.name)
        self._group_ready = False
        self._pool: SenderPool | None = None
        self._in_hand: set[str] = set()  # entries our senders are working on
        self._idle = threading.Condition()

    # -------------------------------------------------------------- the loop

    def run(self) -> None:
        """Serve until ``stop`` is set; Redis failures are waited out, never fatal."""
        known_schemes()  # apprise loads its services once, here rather than in a first send
        self._pool = SenderPool(SENDERS)
        backoff, next_claim = 1.0, 0.0
        try:
            while not self.stop.is_set():
                try:
                    if time.monotonic() >= next_claim:
                        self.claim_stale()
                        self.forget_dead_consumers()
                        next_claim = time.monotonic() + CLAIM_EVERY
                    if self.poll():
                        self.stop.wait(GATHER_S)
                    backoff = 1.0
                except (redis.RedisError, BackendUnavailable) as exc:
                    if "NOGROUP" in str(exc):
                        self._group_ready = False  # the stream was deleted: make it again
                        continue
                    log.warning("notifier: %s; trying again in %.0f s", _describe(exc), backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                except Exception:  # a bug must not end notifications for the worker's life
                    log.exception("notifier: unexpected error; trying again in %.0f s", backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            self._pool.shutdown()

    def ensure_group(self) -> None:
        """Create the consumer group at the stream's end (events from now on) if missing."""
        if self._group_ready:
            return
        try:
            self.r.xgroup_create(self.stream, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def poll(self, block_ms: int = BLOCK_MS) -> int:
        """Take new events (waiting up to ``block_ms`` for some); returns how many."""
        self.ensure_group()
        free = self._free_senders(block_ms)
        if not free:
            return 0
        count = max(free, READ_MAX)
        resp = self.r.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=count, block=block_ms)
        taken, quiet = 0, []
        for _stream, entries in read_reply(resp):
            for entry_id, fields in entries:
                if _asks_nothing(fields):
                    quiet.append(text(entry_id))
                else:
                    self._take(text(entry_id), fields, claimed=False)
                taken += 1
        if quiet:  # nothing to send for these: acknowledged together
            self.r.xack(self.stream, GROUP, *quiet)
        return taken

    def claim_stale(self) -> int:
        """Take over the events other notifiers held too long (they died); returns how many."""
        self.ensure_group()
        taken, start = 0, "0-0"
        for _ in range(100):  # bounded: a look takes at most 100 batches
            free = self._free_senders(0)
            if not free or self.stop.is_set():
                break
            reply = self.r.xautoclaim(
                self.stream, GROUP, self.name, CLAIM_IDLE_MS, start_id=start, count=free
            )
            start, entries = text(reply[0]), reply[1]
            for entry_id, fields in entries:
                if text(entry_id) not in self._in_hand:  # ours, only slow: it goes on
                    self._take(text(entry_id), fields, claimed=True)
                    taken += 1
            if start == "0-0":
                break
        return taken

    def forget_dead_consumers(self) -> list[str]:
        """Remove consumers of notifiers long gone that hold nothing (names pile up)."""
        gone = []
        for consumer in self.r.xinfo_consumers(self.stream, GROUP):
            name = text(consumer["name"])
            if (
                name != self.name
                and int(consumer["pending"]) == 0
                and int(consumer["idle"]) > DEAD_CONSUMER_MS
            ):
                self.r.xgroup_delconsumer(self.stream, GROUP, name)
                gone.append(name)
        return gone

    def _free_senders(self, block_ms: int) -> int:
        """Senders free now (waiting up to ``block_ms`` for one); inline: one entry a time."""
        if self._pool is None:
            return BATCH
        with self._idle:
            self._idle.wait_for(lambda: len(self._in_hand) < SENDERS, timeout=block_ms / 1000)
            return max(0, SENDERS - len(self._in_hand))

    def _take(self, entry_id: str, fields: Mapping[Any, Any] | None, *, claimed: bool) -> None:
        if self._pool is None:
            self._process(entry_id, fields, claimed=claimed)
            return
        with self._idle:
            self._in_hand.add(entry_id)
        self._pool.submit(lambda: self._send_and_release(entry_id, fields, claimed))

    def _send_and_release(
        self, entry_id: str, fields: Mapping[Any, Any] | None, claimed: bool
    ) -> None:
        try:
            self._process(entry_id, fields, claimed=claimed)
        except (redis.RedisError, BackendUnavailable) as exc:
            log.warning("notifier: event %s left for later: %s", entry_id, _describe(exc))
        finally:
            with self._idle:
                self._in_hand.discard(entry_id)
                self._idle.notify_all()

    # -------------------------------------------------------------- one event

    def _process(self, entry_id: str, raw: Mapping[Any, Any] | None, *, claimed: bool) -> None:
        """Handle one entry, then acknowledge it; Redis errors leave it for a retry."""
        try:
            if raw:
                finished = self.handle(entry_id, decode(raw), claimed=claimed)
                if not finished:
                    return  # stopping, or another notifier has it now: no XACK
        except (redis.RedisError, BackendUnavailable):
            raise  # Redis is away: the entry stays pending, to be handled again
        except Exception:  # a bug here must not stop notifications of other runs
            log.exception("notifier: cannot handle event %s; dropping it", entry_id)
        self.r.xack(self.stream, GROUP, entry_id)

    def handle(self, entry_id: str, event: Mapping[str, str], *, claimed: bool = False) -> bool:
        """Send what ``event`` asks for; False if it was left unfinished (stop, taken over)."""
        on = NOTIFY_EVENT_OF.get(event.get("type", ""))
        run_id = event.get("run_id", "")
        if on is None or not run_id:
            return True
        rules = self.runlog.rules(run_id)
        targets = [
            (i, j, url)
            for i, rule in enumerate(rules.rules)
            if on in rule.get("on", ())
            for j, url in enumerate(rule.get("urls", ()))
        ]
        if not targets:
            return True
        done = self.runlog.done(run_id, entry_id) if claimed else set()
        mask = masker([self.env[n] for n in rules.secret_names if self.env.get(n)])
        record = self.runlog.run_record(run_id)
        message = compose(on, event, record, flower_url=self.settings.flower_url, mask=mask)
        for i, j, url in targets:
            target = f"notify[{i}].urls[{j}]"
            if target in done:
                continue
            outcome = deliver(
                url,
                message,
                env=self.env,
                send=self.send,
                still_mine=lambda: self.runlog.still_mine(entry_id),
                wait=self.stop.wait,
                mask=mask,
            )
            if outcome is None:
                return False
            self.runlog.record_outcome(event, on, entry_id, target, url, outcome, rules.workflow)
        return True


def _asks_nothing(raw: Mapping[Any, Any] | None) -> bool:
    """An entry no notification is about, whatever the run asked for (``handle`` would
    acknowledge it at once): not an event users subscribe to, no run, or trimmed away."""
    if not raw:
        return True
    event = decode(raw)
    return NOTIFY_EVENT_OF.get(event.get("type", "")) is None or not event.get("run_id")


def _describe(exc: BaseException) -> str:
    return describe_backend_error(exc) if isinstance(exc, redis.RedisError) else str(exc)


# ---------------------------------------------------------------- in a worker


class NotifierStep(bootsteps.StartStopStep):
    """A notifier thread in each worker, started and stopped with the worker."""

    requires = ("celery.worker.components:Pool",)  # after the pool has forked its children

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.notifier: Notifier | None = None
        self.thread: threading.Thread | None = None

    def include_if(self, parent: Any) -> bool:
        return get_settings().worker_notifier

    def start(self, parent: Any) -> None:
        settings = get_settings()
        self.notifier = Notifier(client_for(settings.redis_url), settings)
        try:
            # before the worker is ready: events from then on are notified
            self.notifier.ensure_group()
        except (redis.RedisError, OSError) as exc:  # the thread tries again; the worker starts
            log.warning("notifier: cannot join the group yet: %s", _describe(exc))
        self.thread = threading.Thread(
            target=self.notifier.run, name="runbook-notifier", daemon=True
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        if self.notifier is not None:
            self.notifier.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)  # a send in flight ends at apprise's timeouts

    shutdown = stop
