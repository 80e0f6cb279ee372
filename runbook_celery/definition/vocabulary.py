"""The vocabulary of run and step statuses, event types and reasons, defined once.

Pure (no Redis): the definition layer (``notify:`` event names), the run records and the
store's scripts' callers all speak it. ``events`` re-exports it next to reading the streams.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"  # waiting for a slot in its concurrency group
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_DECISION = "awaiting_decision"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # concurrency group full with on_conflict: skip

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


TERMINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "skipped"})


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"  # parked: run paused or max_active_steps reached
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_DECISION = "awaiting_decision"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
        )


class EventType(StrEnum):
    """Every type of event written to a run's stream (tests/test_vocabulary.py proves it)."""

    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_SUCCEEDED = "workflow_succeeded"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    WORKFLOW_CANCELLING = "workflow_cancelling"
    WORKFLOW_SKIPPED = "workflow_skipped"  # concurrency group full with on_conflict: skip
    WORKFLOW_PAUSED = "workflow_paused"
    WORKFLOW_RESUMED = "workflow_resumed"
    STEP_STARTED = "step_started"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_SKIPPED = "step_skipped"
    STEP_CANCELLED = "step_cancelled"
    STEP_RETRYING = "step_retrying"
    STEP_HANDED_BACK = "step_handed_back"
    STEP_WAITING = "step_waiting"  # parked: run paused or max_active_steps reached
    STEP_AWAITING_APPROVAL = "step_awaiting_approval"
    STEP_APPROVED = "step_approved"
    STEP_REJECTED = "step_rejected"
    STEP_AWAITING_DECISION = "step_awaiting_decision"  # failed with on_failure: pause
    STEP_DECISION_RETRY = "step_decision_retry"
    STEP_DECISION_SKIP = "step_decision_skip"
    STEP_DECISION_ABORT = "step_decision_abort"
    STEP_AWAITING_CHILD = "step_awaiting_child"  # a uses: step waits for its child run
    # a delivery that no longer held its step tried to record something: kept, not applied
    STEP_RESULT_DISCARDED = "step_result_discarded"
    NOTIFICATION_SENT = "notification_sent"  # a `notify:` URL took a notification (notifylog.py)
    NOTIFICATION_FAILED = "notification_failed"  # it did not, after the attempts made


class FailureReason(StrEnum):
    """Why a step failed (or was cancelled): the ``reason`` of its record and events."""

    EXIT_CODE = "exit_code"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    OUTPUT_TOO_LARGE = "output_too_large"
    SPAWN_ERROR = "spawn_error"
    INTERNAL_ERROR = "internal_error"  # the step task itself failed (a bug), not the step
    REJECTED = "rejected"  # `reject` at its approval gate
    APPROVAL_TIMEOUT = "approval_timeout"  # nobody approved within approval.timeout
    INSTANCE_FAILED = "instance_failed"  # an instance of a fanned-out step failed
    BAD_INPUT = "bad_input"  # for_each got no JSON list, or a value holds a NUL byte
    BAD_WORKING_DIR = "bad_working_dir"  # the step's directory is missing on the worker
    ABORTED = "aborted"  # `abort` of a step awaiting a decision
    TOO_MANY_INSTANCES = "too_many_instances"  # for_each longer than RUNBOOK_MAX_INSTANCES
    EXIT_CODE_SKIP = "exit_code_skip"  # an exit code in skip_on_exit_codes: recorded skipped
    CHILD_FAILED = "child_failed"  # the child run of a uses: step failed
    # the run's snapshot was recorded by a newer release than the worker's (snapshotversion)
    UNSUPPORTED_SNAPSHOT = "unsupported_snapshot"


class WaitReason(StrEnum):
    """Why a step is parked (the ``reason`` of ``step_waiting``)."""

    PAUSED = "paused"
    MAX_ACTIVE_STEPS = "max_active_steps"


# Written to the run's own stream only: the two events of every step's path (CLAIM's and
# FINISH's). Every other event goes to the global stream as well; readers of the global
# stream merge these in from the streams of the runs (store/globalevents.py), so a step
# costs one XADD per transition rather than two.
RUN_STREAM_ONLY_EVENTS = frozenset({EventType.STEP_STARTED, EventType.STEP_SUCCEEDED})

TERMINAL_EVENTS = frozenset(
    {
        EventType.WORKFLOW_SUCCEEDED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELLED,
        EventType.WORKFLOW_SKIPPED,
    }
)
