"""The Celery app: JSON only, at-least-once delivery, task events for Flower.

Delivery is at least once (``acks_late``, prefetch 1, reject on worker lost; see
docs/architecture.md, "Delivery"): the step task guards against duplicate deliveries
itself (its claim in the store, see tasks.py), so redelivery is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from celery.utils.log import get_logger

from ..core.errors import InvalidSetting
from ..core.settings import (
    CONNECT_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    RESPONSE_TIMEOUT,
    Settings,
    get_settings,
    keepalive_options,
)
from ..definition.queuenames import queue_name_problem
from . import workerstore
from .fullredis import use_patient_redis_transport, wait_while_full, worker_stopping
from .taskevents import StepFailed, quiet_ordinary_chord_failures

logger = get_logger("runbook_celery.worker")

STEP_TASK = "runbook.step"
FANIN_TASK = "runbook.fan_in"
RUN_TIMEOUT_TASK = "runbook.run_timeout"
APPROVAL_TIMEOUT_TASK = "runbook.approval_timeout"

# bootsteps of workersteps.py, named here: that module imports this one
WORKER_STEPS = ("Containment", "Reconciler", "HandBack")


class ResultBackend(RedisBackend):
    """The Redis result backend, minus the per-publish result subscription.

    Celery's Redis backend subscribes to a pub/sub channel for every task a client sends,
    so that ``AsyncResult.get()`` can wake up. We never call ``get()`` (runs are followed
    through their event stream), so the subscription is only a wasted round trip per step.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Celery has a setting for keepalive on/off but none for its timers (settings.py)
        params: dict[str, Any] = self.connparams  # type: ignore[attr-defined]  # RedisBackend's; celery-types lacks it
        if params.get("socket_keepalive"):
            params["socket_keepalive_options"] = keepalive_options()

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def on_result_fulfilled(self, result: Any) -> None:
        return None  # nothing was subscribed, so there is nothing to unsubscribe

    def _add_pending_result(self, task_id: str, result: Any, weak: bool = False) -> None:
        """No result subscription inside a worker's task: Celery builds result sets there
        (a chord counting its header restores its group) and subscribes to each member's
        channel, a round trip per member, though a task never waits on a result (Celery
        forbids ``get()`` in a task). Elsewhere (a client calling ``get()``) as Celery."""
        if self.app.current_worker_task is not None:  # type: ignore[attr-defined]
            return None
        super()._add_pending_result(task_id, result, weak=weak)  # type: ignore[misc]

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Storing a step's final result also hands it on in the lease index, in one script.

        Celery stores a task's result after it has published what follows the task (the
        next part of a chain; a dynamic step publishes its children itself), so from here
        on the reconciler has nothing left to replay: the step's entry ends and the
        successors now ready are watched (``RunStore.hand_on``). Steps in a chord header
        hand on after this (the chord counter), so they hand on in ``task_postrun``.
        """
        if request is not None and getattr(handed_on, "finished", None) == request.id:
            handed_on.finished = None
            if state == states.SUCCESS:  # stored by the step's FINISH (chainlink.py)
                return result
        handed_on.member = _lease_member(request, state, result)
        try:
            return super().store_result(
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        finally:
            handed_on.member = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's store, minus its read of the stored result when the write hands on.

        Celery reads the stored state before every write so that a lost delivery's late
        result never replaces a SUCCESS. A step's result that hands on is written by
        ``store_result.lua``, which makes that check itself, atomically with the write: the
        read here would be one more round trip per step for nothing.

        That write is not retried when Redis cannot be reached (Celery's ``set`` retries
        for a while; its read, which failed first, did not): a Redis restarted meanwhile
        may have lost the step's FINISH, and a hand-on then would stop watching a step
        that is open again. Failing, the step stays watched and the reconciler replays it.
        A full Redis is still waited out (fullredis).
        """
        if getattr(handed_on, "member", None) is None:
            return super()._store_result(  # type: ignore[misc]  # celery-types lacks it
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        key, value, expires = self.encoded_result(task_id, result, state, traceback, request)
        wait_while_full(
            lambda: self._set(key, value, expires),
            f"storing task state {_s(key)}",
            give_up=worker_stopping,
        )
        return result

    def encoded_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
    ) -> tuple[str, bytes | str, int | None]:
        """(key, value, expiry) of a task's result as Celery's backend writes it (its meta,
        with ``result_extended`` what the request says; a failure keeps its own expiry;
        None: the backend's); BackendStoreError when too large, as Celery's ``set``."""
        meta = self._get_result_meta(  # type: ignore[attr-defined]  # celery-types lacks it
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = _s(task_id)
        key = _s(self.get_key_for_task(task_id))
        value = self.encode(meta)
        expires = self.failure_expires if state == states.FAILURE else None  # type: ignore[attr-defined]
        if len(value) > self._MAX_STR_VALUE_SIZE:  # type: ignore[attr-defined]  # as Celery's set
            raise BackendStoreError(  # type: ignore[call-arg]  # celery-types lacks them
                "value too large for Redis backend", state=state, task_id=task_id
            )
        return key, value, expires

    # celery-types declares neither RedisBackend.set's expires and retry policy, nor _set,
    # nor the backend's expires, which Celery has: hence the ignores below

    def set(
        self, key: bytes | str, value: Any, expires: int | None = None, **retry_policy: Any
    ) -> None:
        """Store a task state; while Redis is full, wait (see fullredis) instead of failing
        the task or, in the worker's main process, the consumer."""
        return wait_while_full(
            lambda: super(ResultBackend, self).set(key, value, expires, **retry_policy),  # type: ignore[call-arg, arg-type]
            f"storing task state {_s(key)}",
            give_up=worker_stopping,
        )

    def _set(self, key: bytes | str, value: Any, expires: int | None = None) -> None:
        member = getattr(handed_on, "member", None)
        if member is None:
            super()._set(key, value, expires)  # type: ignore[misc]
            return
        settings, store = workerstore.worker_store()
        run_id, _, step_id = member.partition("|")
        successors, ended = handed_on_successors(member)
        store.hand_on(
            run_id,
            step_id,
            successors,
            settings.lease_seconds,
            result=(key, value, self.expires if expires is None else expires),  # type: ignore[attr-defined]
            ended=ended,
        )
        handed_on.dropped = member
        return None

    def on_chord_part_return(
        self,
        request: Any,
        state: str,
        result: Any,
        propagate: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """A step task that failed for another reason than its step failing (its result
        or its transition could not be written: Redis timed out, a partition) is not a
        failed chord member: the chord is left waiting, and the step, still watched, is
        replayed or continued by the reconciler (failing the run over to dynamic dispatch)
        instead of the chord failing and never running its body."""
        if _infrastructure_failure(request, state, result):
            logger.warning(
                "not counting step task %s in its chord: it failed to record (%r); the "
                "reconciler will replay or continue it",
                getattr(request, "id", "?"),
                result,
            )
            return None
        return super().on_chord_part_return(request, state, result, **kwargs)


quiet_ordinary_chord_failures()

# Per worker thread: the lease-index member of the step whose result is being stored, the
# last member handed on that way (so that task_postrun does not do it again), the
# successors the step task found for it (``note_successors``), and the task whose result
# its FINISH stored with the next link of its chain (``finished``: chainlink.py).
handed_on = threading.local()


def note_successors(member: str, successors: Iterable[Any], ended: Iterable[str] = ()) -> None:
    """A step task says which steps may be ready once it has handed on (see hand_on), and
    which other steps of its run hand on with it (``ended``: their transitions were made
    by this task)."""
    handed_on.successors = (member, list(successors), list(ended))


def handed_on_successors(member: str) -> tuple[list[Any], list[str]]:
    """(successors, steps ending with it) noted for ``member`` by its task, if any."""
    noted = getattr(handed_on, "successors", None)
    if noted and noted[0] == member:
        return list(noted[1]), list(noted[2])
    return [], []


def _infrastructure_failure(request: Any, state: str, result: Any) -> bool:
    if request is None or getattr(request, "task", None) != STEP_TASK or state != states.FAILURE:
        return False
    return not isinstance(result, StepFailed)


def _lease_member(request: Any, state: str, result: Any) -> str | None:
    """``run|step`` when storing this result means the step has handed on, else None."""
    task = getattr(request, "task", None) if request is not None else None
    if task not in (STEP_TASK, FANIN_TASK) or request.chord:
        return None
    args: Sequence[Any] = request.args or ()
    if len(args) != 2:
        return None
    if state == states.FAILURE:  # a failure to hand on must stay replayable
        if not isinstance(result, StepFailed):
            return None
    elif state != states.SUCCESS:
        # RETRY: retry/handback keep watching the step for its next message, and a "busy"
        # delivery must not end the entry of the delivery that holds the lease
        return None
    return f"{args[0]}|{args[1]}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _App(Celery):
    """Configured from ``RUNBOOK_*`` when first configured, unless given settings.

    Celery calls ``on_configure`` as a method when it is not its signal (a signal would
    log and swallow a bad setting, leaving the app without a broker or backend); raising
    here reaches the caller, as a bad setting must.
    """

    lazy = True  # False when make_app() was given settings (configured from them at once)

    def on_configure(self) -> None:  # type: ignore[override]
        if self.lazy:
            self.config_from_object(celery_config(get_settings()))


def make_app(settings: Settings | None = None) -> Celery:
    """The Celery app, configured from ``settings``, or without them from ``RUNBOOK_*`` when
    the app is first configured (first use), not when this module is imported: a process
    that imports the engine (the CLI does) meets a bad setting inside its error handling,
    where it is one line and exit 2, never a traceback at import."""
    use_patient_redis_transport()
    app = _App("runbook_celery", include=["runbook_celery.engine.tasks"])
    if settings is not None:  # checked now: the caller has them
        app.lazy = False
        app.config_from_object(celery_config(settings))
    # checks each item a worker pops from a Redis queue before kombu parses it (poison.py)
    app.steps["consumer"].add("runbook_celery.engine.poison:EnvelopeCheck")
    # a notifier thread per worker, started and stopped with it (notify.py)
    app.steps["worker"].add("runbook_celery.engine.notify:NotifierStep")
    # step containment, the lease reconciler and the shutdown hand-back (workersteps.py)
    for step in WORKER_STEPS:
        app.steps["worker"].add(f"runbook_celery.engine.workersteps:{step}")
    return app


def celery_config(s: Settings) -> dict[str, Any]:
    """Celery's settings for ours: broker, result backend, delivery and transport options."""
    if problem := queue_name_problem(s.default_queue):
        raise InvalidSetting([f"RUNBOOK_QUEUE: {problem}"])
    redis_broker = s.broker_url.startswith(("redis", "rediss"))
    # Redis serves 0 first (our 5 -> 4); AMQP queues need x-max-priority, higher first
    default_priority = 4 if redis_broker else 5
    return dict(
        broker_url=s.broker_url,
        result_backend=f"runbook_celery.engine.app:ResultBackend+{s.redis_url}",
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=s.default_queue,
        task_default_priority=default_priority,  # = priority 5 on our 0-9 scale
        task_queue_max_priority=None if redis_broker else 9,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # No STARTED result write per step: Flower learns "started" from task events, and
        # the run store records each step's start in its claim (one write less per step).
        task_track_started=False,
        result_extended=True,
        result_expires=s.retention,
        result_chord_join_timeout=30,
        broker_transport_options=_broker_transport_options(s, redis_broker),
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout},
        visibility_timeout=s.visibility_timeout,
        worker_soft_shutdown_timeout=0,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        # No task-sent events: they carry the real task name ("runbook.step"), and when one
        # reaches Flower after the worker's task-received event (which carries the shadow
        # name "<workflow>.<step>") Flower shows the step under the generic name.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        # Celery's consumer, but a message it cannot use is dead-lettered (poison.py; its
        # EnvelopeCheck bootstep does the same for Redis items kombu cannot parse)
        worker_consumer="runbook_celery.engine.poison:Consumer",
        **_connection_config(),
    )


def _broker_transport_options(s: Settings, redis_broker: bool) -> dict[str, object]:
    """kombu's options for the broker (brokerlayout.py reads the Redis layout from them)."""
    options: dict[str, object] = {"visibility_timeout": s.visibility_timeout}
    if redis_broker:
        # ten priority lists per queue, 0 = highest (the Redis transport's convention)
        options.update(priority_steps=list(range(10)), sep=":", queue_order_strategy="priority")
        # the network timing of every Redis connection (settings.py says why each value)
        options.update(
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=RESPONSE_TIMEOUT,
            socket_keepalive=True,
            socket_keepalive_options=keepalive_options(),
            health_check_interval=HEALTH_CHECK_INTERVAL,
        )
    return options


def _connection_config() -> dict[str, Any]:
    """How Celery connects and publishes: the network timing of settings.py, few retries."""
    return dict(
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # the result backend's connections
        redis_socket_connect_timeout=CONNECT_TIMEOUT,
        redis_socket_timeout=RESPONSE_TIMEOUT,
        redis_socket_keepalive=True,
        redis_backend_health_check_interval=HEALTH_CHECK_INTERVAL,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    )


app = make_app()
