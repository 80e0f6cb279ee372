"""The run snapshot as a typed, frozen record: what a worker reads of a run.

A snapshot is stored as JSON (``plan/compile.py: build_snapshot`` writes it at trigger
time); a worker parses it once per run per process (``engine/step/context.py`` caches
the result) into ``RunSnapshot``, checking its format version first
(``snapshotversion``), and the step's stages read typed fields instead of keys. The wire
format is unchanged: ``raw`` keeps the stored mapping for the code that passes it on
(dispatch, child runs, canvas continuations), and a snapshot of version 1 written before
a field existed reads that field as its default, as the engine always has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .snapshotversion import checked_snapshot

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if value else _EMPTY


def _ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries:`` of a step (or the workflow's ``defaults``)."""

    limit: int
    delay: float = 0
    backoff: float = 1
    max_delay: float | None = None
    on_exit_codes: tuple[int, ...] | None = None  # None: any exit code

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> RetryPolicy | None:
        if not data:
            return None
        return cls(
            limit=int(data["limit"]),
            delay=data.get("delay", 0),
            backoff=data.get("backoff", 1),
            max_delay=data.get("max_delay"),
            on_exit_codes=_ints(data.get("on_exit_codes")),
        )

    def delay_before(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt`` (1-based): backoff, then the cap."""
        delay: float = self.delay * (self.backoff ** (attempt - 1))
        return delay if self.max_delay is None else min(delay, self.max_delay)


@dataclass(frozen=True, slots=True)
class ApprovalGate:
    """``approval:``: the step waits for a person; rejected after ``timeout`` seconds."""

    prompt: str = ""
    timeout: float | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> ApprovalGate | None:
        if not data:
            return None
        return cls(prompt=data.get("prompt", ""), timeout=data.get("timeout"))


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step as frozen for a run (the wire keys are in ``parse``)."""

    id: str
    needs: tuple[str, ...]
    command: str
    env: Mapping[str, str]  # templates: ${{ }} filled in as data on the worker
    vars: Mapping[str, str]  # variable -> expression source, placed in `command`
    shell_script: str | None = None  # shell: sh/python/...: the text `command` starts
    working_dir: str | None = None
    retries: RetryPolicy | None = None
    timeout: float | None = None
    kill_grace: float | None = None
    continue_on_error: bool | tuple[int, ...] = False  # a tuple: the exit codes allowed
    skip_on_exit_codes: tuple[int, ...] = ()
    output: str | None = None
    condition: str | None = None  # `if:`
    matrix: Mapping[str, Any] | None = None
    for_each: str | None = None
    max_parallel: int | None = None
    approval: ApprovalGate | None = None
    on_failure: str | None = None
    uses: str | None = None  # the bundle key of the workflow a child run runs
    with_: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # `with:`
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> StepSpec:
        allowed = data.get("continue_on_error") or False
        return cls(
            id=data["id"],
            needs=tuple(data.get("needs") or ()),
            command=data.get("command", ""),
            env=_frozen(data.get("env")),
            vars=_frozen(data.get("vars")),
            shell_script=data.get("shell_script"),
            working_dir=data.get("working_dir"),
            retries=RetryPolicy.parse(data.get("retries")),
            timeout=data.get("timeout"),
            kill_grace=data.get("kill_grace"),
            continue_on_error=tuple(allowed) if isinstance(allowed, list) else bool(allowed),
            skip_on_exit_codes=tuple(data.get("skip_on_exit_codes") or ()),
            output=data.get("output"),
            condition=data.get("if") or None,
            matrix=data.get("matrix") or None,
            for_each=data.get("for_each") or None,
            max_parallel=data.get("max_parallel"),
            approval=ApprovalGate.parse(data.get("approval")),
            on_failure=data.get("on_failure"),
            uses=data.get("uses"),
            with_=_frozen(data.get("with")),
            raw=data,
        )

    @property
    def fans_out(self) -> bool:
        """A ``matrix`` or ``for_each`` step: it runs as instances ``ID[0]``, ``ID[1]``, ..."""
        return bool(self.matrix or self.for_each)


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run's snapshot: the workflow as frozen at trigger time (the wire keys in ``parse``)."""

    version: int
    workflow: str
    mode: str
    params: Mapping[str, str]
    env: Mapping[str, str]
    steps: Mapping[str, StepSpec]  # by id, in the workflow's order
    max_active_steps: int = 0  # 0: no limit
    secrets: tuple[str, ...] = ()
    base_dir: str | None = None
    reused: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # a rerun's, kept
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)

    @classmethod
    def parse(cls, run_id: str, data: Mapping[str, Any]) -> RunSnapshot:
        """The typed snapshot; ``UnsupportedSnapshot`` for a version this code does not know."""
        checked_snapshot(run_id, data)
        steps = (StepSpec.parse(s) for s in data["steps"])
        return cls(
            version=data.get("version", 1),
            workflow=data["workflow"],
            mode=data["mode"],
            params=_frozen(data.get("params")),
            env=_frozen(data.get("env")),
            steps=MappingProxyType({s.id: s for s in steps}),
            max_active_steps=int(data.get("max_active_steps") or 0),
            secrets=tuple(data.get("secrets") or ()),
            base_dir=data.get("base_dir"),
            reused=_frozen(data.get("reused")),
            raw=data,
        )
