"""Poison messages never stop a worker: they go to the dead letters, with a log line.

A worker used to exit with "Unrecoverable error" on one malformed message, and since the
message was restored to its queue at shutdown, so did every worker started after it. Each
place a malformed message could raise out of the consumer is now guarded, at the depth
where the message still exists in the form that is wrong:

1. Redis transport, before kombu builds a Message: an item that is not a JSON envelope, whose
   body is not valid base64, or that lacks what kombu reads (delivery tag and info) raised
   out of kombu's BRPOP reader into the event loop. kombu has no hook there; redis-py does:
   a reply callback for BRPOP on the consuming channel's client (``EnvelopeCheck``, a
   consumer bootstep) sees each popped item first and hands kombu nothing for a poison item.
2. Celery's consumer, before the task strategy (``Consumer.create_task_handler``): headers
   that are not a mapping, a task name that is not text (an unhashable one crashed the
   strategy lookup), a body that is not ``[args, kwargs, embed]`` (Celery's Request unpacks
   it), and, for our tasks, arguments other than ``(run_id, step_id)`` strings of the right
   form. Such a message goes to Celery's own ``on_invalid_task`` hook.
3. Celery's hooks ``on_decode_error``, ``on_unknown_message``, ``on_unknown_task`` and
   ``on_invalid_task`` refused messages without stopping, but only logged them (and
   ``on_unknown_task`` could itself raise on a message without an id); here each one
   dead-letters the message and disposes of it.

The worker's queues are checked too (``queuenames.py``, and the key names kombu is configured
with, ``brokerlayout.py``): a worker refuses to start on ``-Q unacked``, whose list would
clobber kombu's bookkeeping.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import redis
from celery import bootsteps
from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from vine import promise

from ..core.errors import EXIT_INVALID
from ..core.settings import get_settings
from ..definition.queuenames import queue_name_problem
from ..store.deadletter import DeadLetters, make_dead_letter
from ..store.redisconn import get_client, redact
from .app import APPROVAL_TIMEOUT_TASK, FANIN_TASK, RUN_TIMEOUT_TASK, STEP_TASK
from .brokerlayout import BrokerLayout, broker_layout

logger = logging.getLogger("runbook_celery.poison")

RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # uuid4 hex today; never ':' (key names)
STEP_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}(\[[0-9]{1,6}\])?$")  # id or id[N]

# Our tasks and the positional arguments each takes (all strings, no keyword arguments).
SIGNATURES: dict[str, tuple[str, ...]] = {
    STEP_TASK: ("run_id", "step_id"),
    FANIN_TASK: ("run_id", "step_id"),
    APPROVAL_TIMEOUT_TASK: ("run_id", "step_id"),
    RUN_TIMEOUT_TASK: ("run_id",),
}
_ARG_PATTERNS = {"run_id": RUN_ID_RE, "step_id": STEP_ID_RE}
_TEXT_FIELDS = ("content-type", "content-encoding")  # of a kombu envelope
_TEXT_HEADERS = ("root_id", "parent_id", "group", "shadow", "argsrepr", "kwargsrepr", "origin")


def dead_letter(
    raw: bytes | str | None,
    reason: str,
    queue: str | None,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Keep a refused message in the dead letters and say so in the log; never raises."""
    letter = make_dead_letter(raw, reason, queue, headers)
    try:
        settings = get_settings()
        DeadLetters(get_client(settings), settings.prefix).add(letter)
    except redis.RedisError as exc:  # the message is gone either way: keep it in the log
        logger.error(
            "could not store a dead letter (%s); message from queue %s refused: %s; body: %r",
            redact(str(exc)),
            letter.queue,
            letter.reason,
            letter.body[:1000],
        )
        return
    # (queue and reason as stored: control characters escaped, as a sender chose them)
    logger.error(
        "dead letter: message from queue %s refused: %s (%d bytes; see `runbook-celery "
        "dead-letters`)",
        letter.queue,
        letter.reason,
        letter.size,
    )


# ---------------------------------------------------------------- 1. the Redis transport


def envelope_problem(item: bytes | str) -> str | None:
    """Why kombu could not turn a popped item into a Message, or None."""
    try:
        payload = json.loads(item)
    except (ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        return "the envelope is not JSON"
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {type(payload).__name__}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "the envelope has no 'properties' object"
    tag, info = props.get("delivery_tag"), props.get("delivery_info")
    if not isinstance(tag, str) or not tag:
        return "the envelope has no delivery tag"
    if not isinstance(info, dict) or not all(
        isinstance(info.get(k), str) for k in ("exchange", "routing_key")
    ):
        return "the envelope has no delivery info (exchange, routing key)"
    priority = props.get("priority")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):
        return "the envelope's priority is not an integer 0-255"
    if not isinstance(payload.get("headers"), dict | None):
        return "the envelope's headers are not an object"
    if not all(isinstance(payload.get(k), str | None) for k in _TEXT_FIELDS):
        return "the envelope's content type or encoding is not text"
    return _body_problem(payload.get("body"), props.get("body_encoding"))


def _body_problem(body: Any, encoding: Any) -> str | None:
    if encoding not in (None, "base64"):
        return "the envelope's body encoding is not base64"
    if body is not None and not isinstance(body, str):
        return "the envelope's body is not text"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the envelope's body is not valid base64"
    return None


def checked_brpop(channel: Any, response: Any, **_: Any) -> tuple[Any, Any] | None:
    """redis-py's reply callback for BRPOP on a consuming channel: poison becomes None.

    None is what a BRPOP that timed out gives, so kombu carries on as after a timeout.
    """
    if not response:
        return None
    key, item = response
    problem = envelope_problem(item)
    if problem is None:
        return key, item
    # the key as Redis named it (kombu removes its global key prefix after this callback)
    dead_letter(item, problem, BrokerLayout.from_channel(channel).queue_of(key))
    return None


class EnvelopeCheck(bootsteps.StartStopStep):
    """Consumer bootstep: check each item the worker pops from Redis before kombu parses it.

    kombu's Redis channel parses a popped item inline (``Channel._brpop_read``) and has no
    hook of its own; the raw bytes exist only in redis-py's reply, and a reply callback is
    redis-py's supported way to post-process a command's reply. The callback goes on the
    client of the channel that consumes task queues, again whenever the consumer
    (re)connects, and nowhere else: publishers and other channels are untouched.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if c.connection.transport.driver_type != "redis":
            return  # AMQP hands Celery a message whatever its body; Consumer checks that
        channel = c.task_consumer.channel
        channel.client.set_response_callback("BRPOP", partial(checked_brpop, channel))


# ---------------------------------------------------------------- 2. Celery's consumer


def header_problem(headers: Any) -> str | None:
    """Why these headers are not those of a Celery (protocol 2) task message, or None."""
    if not isinstance(headers, dict):
        return f"the headers are {type(headers).__name__}, not a mapping"
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str) or not task_id:
        return "not a Celery task message: no 'task' and 'id' headers (protocol 2)"
    for key in _TEXT_HEADERS:
        if not isinstance(headers.get(key), str | None):
            return f"header {key!r} is not text"
    retries = headers.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        return "header 'retries' is not a count"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or type(v) in (int, float) for v in limits)
    ):
        return "header 'timelimit' is not [soft, hard]"
    if not isinstance(headers.get("eta"), str | None):
        return "header 'eta' is not a date"
    return None


def body_problem(task: str, body: Any) -> str | None:
    """Why a decoded body is not ``[args, kwargs, embed]`` fitting ``task``, or None."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return "the body is not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return "the body's args are not a list or its kwargs not a mapping"
    if not isinstance(embed, dict | None):
        return "the body's embed (callbacks, chain, chord) is not a mapping"
    signature = SIGNATURES.get(task)
    if signature is None:
        return None
    shape = f"{task} takes ({', '.join(signature)}) as strings"
    if kwargs or len(args) != len(signature):
        return f"{shape}, got {len(args)} args and {len(kwargs)} kwargs"
    for name, value in zip(signature, args, strict=True):
        if not isinstance(value, str) or not _ARG_PATTERNS[name].match(value):
            return f"{shape}; {name} is {_preview(value)}"
    return None


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _reserved_problem(name: str, reserved: frozenset[str]) -> str | None:
    """queuenames knows kombu's default key names; these are the ones configured."""
    if name in reserved:
        return f"{name!r} is a Redis key of the broker (kombu's bookkeeping); choose another"
    return None


class Consumer(CeleryConsumer):
    """Celery's consumer; poison messages go to the dead letters (app.py: worker_consumer)."""

    # set by Celery's Consumer.__init__ from the connection; celery-types omits them
    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reserved = broker_layout().reserved_names()  # kombu's, as configured
        for name in self.app.amqp.queues.consume_from:
            if problem := queue_name_problem(name) or _reserved_problem(name, reserved):
                # The first message would clobber a broker key (kombu's unacked hash, ...).
                logger.critical("refusing to consume queue %r: %s", name, problem)
                raise SystemExit(EXIT_INVALID)

    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        """Celery's handler, behind a check that turns a malformed message into a refusal."""
        handle = super().create_task_handler(promise)
        recoverable = (*self.connection_errors, *self.channel_errors)

        def on_task_received(message: Message) -> Any:
            try:
                problem = self._message_problem(message)
            except ContentDisallowed as exc:
                return self.on_invalid_task(None, message, exc)
            except Exception as exc:  # whatever the serializer raised
                return self.on_decode_error(message, exc)
            if problem:
                return self.on_invalid_task(None, message, InvalidTaskError(problem))
            try:
                return handle(message)
            except recoverable:
                raise  # the consumer reconnects, as it would without us
            except Exception as exc:  # a message must not stop the worker
                logger.exception("unexpected error handling a message")
                if not message.acknowledged:
                    self._refuse(message, f"the worker could not accept it: {exc!r}")
                return None

        return on_task_received

    def _message_problem(self, message: Message) -> str | None:
        headers = message.headers
        if problem := header_problem(headers):
            return problem
        if headers["task"] not in self.app.tasks:
            return None  # on_unknown_task refuses it
        return body_problem(headers["task"], message.payload)  # decode errors propagate

    # Celery's hooks for messages it cannot use: dead-letter, then refuse as Celery does.

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"cannot decode the body: {exc!r}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._refuse(message, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        # Celery's version also marks the message's id FAILED in the result backend: an id
        # a hostile message chooses, so it is not done here.
        self._refuse(message, f"unknown task {_preview(message.headers.get('task'))}")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._refuse(message, f"invalid task message: {exc}")

    def _refuse(self, message: Message, reason: str) -> None:
        self._dead_letter(message, reason)
        message.reject_log_error(logger, self.connection_errors)

    def _dead_letter(self, message: Message, reason: str) -> None:
        headers = message.headers if isinstance(message.headers, dict) else None
        info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        queue = info.get("routing_key")
        dead_letter(message.body, reason, queue if isinstance(queue, str) else None, headers)
