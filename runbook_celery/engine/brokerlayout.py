"""Where kombu's Redis transport keeps messages, read from the transport options: one adapter.

Recovery (recovery.py) looks for a step's message where kombu left it and puts it back,
and the poison check (poison.py) names the queue of a popped item, so both must know
kombu's Redis layout: the hash of unacknowledged messages and its index, the lists of a
queue (one per priority step), the separator between a queue and its priority, and the
global key prefix before every key. kombu reads each of these from the broker's transport
options, falling back to its ``Channel`` defaults; ``BrokerLayout`` does the same, from the
app's ``broker_transport_options`` (``broker_layout``) or from a live channel
(``from_channel``), so nothing else hard-codes them.

kombu's rules, as ``kombu.transport.redis.Channel`` applies them:

* a message of priority ``p`` (clamped to 0-9) goes to the list of the priority step at or
  below ``p`` (``Channel.priority``): the queue itself for step 0, else ``<queue><sep><step>``;
* with ``global_keyprefix`` every key kombu touches starts with it: the queues, the
  unacknowledged hash, its index and its mutex (``GlobalKeyPrefixMixin``).

The queue of a message is its routing key: our tasks go to direct exchanges named like
their queue, bound by that routing key (Celery's default routing).

definition/queuenames.py keeps kombu's default key names as a pure constant (the definition
layer imports no kombu); ``reserved_names`` here are the ones in use, and
tests/test_brokerlayout.py checks that the two agree for kombu's defaults.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kombu.transport.redis import Channel
from kombu.utils.json import dumps

from .app import app

# kombu's clamp of a message's priority (kombu.transport.virtual.Channel)
MIN_PRIORITY, MAX_PRIORITY = 0, 9


@dataclass(frozen=True)
class BrokerLayout:
    """kombu's Redis key names and priority lists for one set of transport options."""

    unacked_key: str = Channel.unacked_key
    unacked_index_key: str = Channel.unacked_index_key
    unacked_mutex_key: str = Channel.unacked_mutex_key
    priority_steps: tuple[int, ...] = tuple(Channel.priority_steps)
    sep: str = Channel.sep
    global_keyprefix: str = Channel.global_keyprefix

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> BrokerLayout:
        """The layout kombu uses with these ``broker_transport_options``."""
        opts = options or {}
        default = cls()
        return cls(
            unacked_key=opts.get("unacked_key", default.unacked_key),
            unacked_index_key=opts.get("unacked_index_key", default.unacked_index_key),
            unacked_mutex_key=opts.get("unacked_mutex_key", default.unacked_mutex_key),
            priority_steps=tuple(opts.get("priority_steps", default.priority_steps)),
            sep=opts.get("sep", default.sep),
            global_keyprefix=opts.get("global_keyprefix", default.global_keyprefix) or "",
        )

    @classmethod
    def from_channel(cls, channel: Any) -> BrokerLayout:
        """The layout of a live kombu Redis channel (its options already applied)."""
        return cls(
            unacked_key=channel.unacked_key,
            unacked_index_key=channel.unacked_index_key,
            unacked_mutex_key=channel.unacked_mutex_key,
            priority_steps=tuple(channel.priority_steps),
            sep=channel.sep,
            global_keyprefix=channel.global_keyprefix or "",
        )

    # ---------------------------------------------------------------- keys, as in Redis

    @property
    def unacked(self) -> str:
        """The hash of unacknowledged messages: delivery tag -> [payload, exchange, key]."""
        return self.global_keyprefix + self.unacked_key

    @property
    def unacked_index(self) -> str:
        """The sorted set of unacknowledged delivery tags, by delivery time."""
        return self.global_keyprefix + self.unacked_index_key

    def queue_key(self, queue: str, priority: int = 0) -> str:
        """The list a message of ``priority`` (kombu's 0-9, 0 first) waits in."""
        step = self.priority_step(priority)
        name = f"{queue}{self.sep}{step}" if step else queue
        return self.global_keyprefix + name

    def queue_keys(self, queue: str) -> list[str]:
        """Every list of ``queue``, in the order kombu serves them."""
        keys = [self.queue_key(queue, p) for p in self.priority_steps]
        return list(dict.fromkeys(keys))

    def message_queue_key(self, payload: Mapping[str, Any], routing_key: str) -> str:
        """The list kombu puts an unacknowledged ``payload`` back on (``_do_restore_message``)."""
        return self.queue_key(routing_key, message_priority(payload))

    def priority_step(self, priority: int) -> int:
        """kombu's ``Channel.priority``: the priority step at or below ``priority``."""
        steps = self.priority_steps
        return steps[bisect(steps, priority) - 1]

    # ---------------------------------------------------------------- names

    def queue_of(self, key: bytes | str) -> str:
        """The queue a list belongs to: ``key`` without the prefix and priority suffix."""
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        name = name.removeprefix(self.global_keyprefix)
        base, found, suffix = name.rpartition(self.sep)
        return base if found and suffix.isdigit() else name

    def reserved_names(self) -> frozenset[str]:
        """Key names of kombu's bookkeeping a queue must not take (before the prefix)."""
        return frozenset({self.unacked_key, self.unacked_index_key, self.unacked_mutex_key})


def message_priority(payload: Mapping[str, Any]) -> int:
    """kombu's priority of a message (``_get_message_priority``): 0-9, 0 when unreadable."""
    try:
        value = int(payload["properties"]["priority"])
    except (TypeError, ValueError, KeyError):
        return MIN_PRIORITY
    return max(min(value, MAX_PRIORITY), MIN_PRIORITY)


def broker_layout() -> BrokerLayout:
    """The layout of our app's Redis broker (its ``broker_transport_options``)."""
    return BrokerLayout.from_options(app.conf.broker_transport_options)


@contextmanager
def captured_publish(channel: Any) -> Iterator[list[tuple[str, str]] | None]:
    """Publish on ``channel`` without sending: yields the (list key, payload) of each message
    kombu's Redis transport would have pushed (its ``_put``: the list of the message's
    priority step, the message as kombu's JSON), for a script to push instead. Yields None
    (and publishing sends as usual) when the channel is not kombu's Redis channel; a queue
    kombu would also expire (``x-expires``) is not captured (the list stays empty)."""
    if not isinstance(channel, Channel):
        yield None
        return
    layout = BrokerLayout.from_channel(channel)
    puts: list[tuple[str, str]] = []
    expiring: dict[str, Any] = getattr(channel, "_expires", None) or {}

    def put(queue: str, message: dict[str, Any], **_: Any) -> None:
        if queue not in expiring:
            puts.append((layout.message_queue_key(message, queue), dumps(message)))

    channel._put = put  # type: ignore[method-assign]  # this instance, while held
    try:
        yield puts
    finally:
        del channel._put
