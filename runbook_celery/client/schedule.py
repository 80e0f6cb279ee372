"""Scheduled runs: a definition's ``schedule:`` makes ``runbook-celery beat`` trigger it.

``schedule`` is a 5-field cron expression, a macro (``@hourly``, ``@daily``, ...) or
``@every <N>s|m|h``, read by ``cron.py`` (Vixie cron semantics, in the workflow's
``timezone:`` or UTC). Celery's own ``crontab`` cannot say "day of month OR day of week"
nor take a zone per entry, so a cron entry is a ``CronSchedule`` whose due times come from
``firetimes.next_fire``; ``@every`` stays Celery's interval ``schedule``.

Design: Celery beat runs our scheduler over the definitions folder. When an entry is due,
the beat process itself calls ``api.submit`` on the file (validated and snapshotted at that
moment), so a scheduled run is an ordinary run: same record, events and history, plus the
run field ``trigger=schedule``. Workers need neither the folder nor an extra task, and a
definition that became invalid is reported by beat instead of failing on a worker.
Overlap ``skip`` (the default) starts nothing while the last scheduled run of that workflow,
remembered in Redis under ``<prefix>:schedule:<workflow>:last``, has not finished.
Run exactly one beat per Redis prefix, as with any Celery beat. Like Celery beat (and cron),
fire times that pass while beat is down are not made up when it starts again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.beat import Scheduler
from celery.schedules import BaseSchedule, schedstate
from celery.schedules import schedule as interval_schedule

from ..core.errors import InvalidDefinition, Problem
from ..core.settings import Settings, get_settings
from ..definition.cron import Cron, Every, ScheduleError, Spec, parse
from ..definition.firetimes import next_fire
from ..definition.loader import load_workflow
from ..definition.safefiles import list_definitions
from ..store import RunStore
from ..store.events import RunStatus
from ..store.redisconn import get_client
from .api import submit

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("runbook_celery.beat")

SCHEDULED_TASK = "runbook.scheduled_trigger"  # entry name only: due entries are not sent
DEFAULT_RELOAD_SECONDS = 1.0  # longest beat sleep, so a changed folder is seen this fast
NEVER = timedelta(days=3650)  # "not due" for an expression with no fire time left


class CronSchedule(BaseSchedule):
    """A Celery beat schedule for a ``cron.Cron``: due when its next fire time has come.

    ``last_run_at`` is when beat last ran the entry (or built it); the entry is due once
    ``next_fire(last_run_at)`` has passed, and the check after that is at the following fire
    time. ``nowfun`` lets tests drive it with a frozen clock.
    """

    def __init__(
        self, cron: Cron, nowfun: Callable[[], datetime] | None = None, app: Celery | None = None
    ) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.cron = cron

    def _aware(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    def next_after(self, moment: datetime) -> datetime | None:
        fire = next_fire(self.cron, self._aware(moment))
        return fire.at if fire is not None else None

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        due = self.next_after(last_run_at)
        if due is None:
            return NEVER
        return due - self._aware(self.now())

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(is_due=False, next=remaining)
        now = self._aware(self.now())
        following = self.next_after(now)
        later = (following - now).total_seconds() if following else NEVER.total_seconds()
        return schedstate(is_due=True, next=later)

    def __repr__(self) -> str:
        return f"<cron: {self.cron}>"

    def __str__(self) -> str:
        return str(self.cron)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CronSchedule):
            # celery-types names BaseSchedule's nowfun "nowfunc"; Celery's is nowfun
            return self.cron == other.cron and self.nowfun == other.nowfun  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.cron)

    def __reduce__(self) -> tuple[type, tuple[Cron, Callable[[], datetime] | None]]:
        return self.__class__, (self.cron, self.nowfun)  # type: ignore[attr-defined]


def celery_schedule(spec: Spec) -> BaseSchedule:
    """The Celery beat schedule of a parsed ``schedule:``."""
    if isinstance(spec, Every):
        return interval_schedule(timedelta(seconds=spec.seconds))
    return CronSchedule(spec)


def parse_schedule(text: str, timezone: str | None = None) -> BaseSchedule:
    """The Celery schedule for a ``schedule:`` value (and the workflow's ``timezone:``).

    Raises:
        ScheduleError: with a message naming the bad part, e.g. ``hour '25': ...``.
    """
    return celery_schedule(parse(text, timezone))


def last_run_key(prefix: str, workflow: str) -> str:
    """Redis key holding the id of the last run the schedule started for ``workflow``."""
    return f"{prefix}:schedule:{workflow}:last"


def definition_files(directory: Path) -> list[Path]:
    """Workflow files of the folder that ``safefiles`` lets us read (see read_definitions)."""
    return list_definitions(directory).files


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, mtimes and sizes: any added, removed or edited file changes it."""
    out = []
    for path in definition_files(directory):
        try:
            st = path.stat()
        except FileNotFoundError:  # removed while we listed
            continue
        out.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(frozen=True)
class ScheduledDefinition:
    """One file with a valid ``schedule:``."""

    path: Path
    workflow: str
    spec: str
    parsed: Spec
    overlap: str

    @property
    def schedule(self) -> BaseSchedule:
        return celery_schedule(self.parsed)


def read_definitions(
    directory: Path, on_problem: Callable[[Any], None] | None = None
) -> list[ScheduledDefinition]:
    """Files of ``directory`` that declare a valid schedule.

    Each problem of an invalid file goes to ``on_problem`` (default: logged, as beat does).
    """

    found = []
    listing = list_definitions(directory)
    for path, why in listing.refused:
        problem = Problem(str(path), None, why)
        if on_problem is None:
            log.error("not scheduled: %s", problem.render())
        else:
            on_problem(problem)
    for path in listing.files:
        try:
            wf = load_workflow(path).workflow
        except InvalidDefinition as exc:
            for problem in exc.problems:
                if on_problem is None:
                    log.error("not scheduled: %s", problem.render())
                else:
                    on_problem(problem)
            continue
        if wf.schedule is None:
            continue
        try:  # the loader checked it: this only guards against a change of rules
            parsed = parse(wf.schedule, wf.timezone)
        except ScheduleError as exc:
            log.error("not scheduled: %s: %s: %s", path, exc.key, exc)
            continue
        found.append(ScheduledDefinition(path, wf.name, wf.schedule, parsed, wf.overlap))
    return found


def trigger_scheduled(path: Path, settings: Settings | None = None) -> str | None:
    """Start a run of the definition at ``path`` as the schedule would; None if skipped.

    Raises:
        InvalidDefinition: the file is no longer valid.
        BackendUnavailable: Redis or the broker did not answer.
    """

    settings = settings or get_settings()
    loaded = load_workflow(path)
    wf = loaded.workflow
    r = get_client(settings)
    key = last_run_key(settings.prefix, wf.name)
    if wf.overlap == "skip":
        raw = r.get(key)
        last = raw.decode() if isinstance(raw, bytes) else raw
        if last:
            status = RunStore(r, settings.prefix, settings.retention).run_status(last)
            if status is not None and status not in {s.value for s in RunStatus if s.terminal}:
                log.info("skipped %s: its last scheduled run %s is %s", wf.name, last, status)
                return None
    run = submit(loaded, settings=settings, extra={"trigger": "schedule"})
    r.set(key, run.id, ex=settings.retention)
    zone = f" in {wf.timezone}" if wf.timezone else ""
    log.info("started %s run %s (schedule %r%s)", wf.name, run.id, wf.schedule, zone)
    return run.id


def _beat_entries(definitions: Path) -> dict[str, dict[str, Any]]:
    """Beat's entries: one per scheduled definition of the folder, keyed by its path."""
    return {
        str(d.path): {"task": SCHEDULED_TASK, "schedule": d.schedule, "args": (str(d.path),)}
        for d in read_definitions(definitions)
    }


def _trigger_logging_failure(path: Path) -> None:
    """Trigger the due definition at ``path``; a failure is logged, never raised (beat must
    keep serving the other schedules)."""
    try:
        trigger_scheduled(path)
    except Exception as exc:
        if isinstance(exc, InvalidDefinition):
            for problem in exc.problems:
                log.error("not started: %s", problem.render())
        else:
            log.error("not started: %s: %s", path, exc)


class DefinitionsScheduler(Scheduler):
    """Beat's schedule is the folder's definitions; re-read when any file there changes.

    Set ``definitions`` on a subclass (see ``scheduler_for``): beat builds the scheduler
    from its class alone.
    """

    definitions: Path = Path(".")
    # celery-types: max_interval an int (Celery sleeps any number of seconds) and
    # producer always a Producer (here it is never made)
    max_interval = DEFAULT_RELOAD_SECONDS  # type: ignore[assignment]
    producer = None  # type: ignore[assignment]  # due entries are submitted here, not sent

    def setup_schedule(self) -> None:
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        seen = _fingerprint(self.definitions)
        if seen == self._seen:
            return
        self._seen = seen
        entries = _beat_entries(self.definitions)
        # celery-types: entries; Celery's merge_inplace takes their fields and makes them
        self.merge_inplace(entries)  # type: ignore[arg-type]
        self._heap = None  # entries changed in place or went away: rebuild the timing heap
        names = ", ".join(f"{Path(n).name} [{self.schedule[n].schedule}]" for n in entries)
        log.info("schedules from %s: %s", self.definitions, names or "none")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self._reload_if_changed()
        return super().tick(*args, **kwargs)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **_: Any) -> None:
        entry = self.reserve(entry) if advance else entry
        _trigger_logging_failure(Path(entry.args[0]))

    @property
    def info(self) -> str:
        return f"    . definitions -> {self.definitions}"


def scheduler_for(directory: Path) -> type[Scheduler]:
    """A beat scheduler class whose entries are the scheduled definitions of ``directory``.

    Beat instantiates the class itself, so the folder is bound as a class attribute.
    """
    return type("DefinitionsScheduler", (DefinitionsScheduler,), {"definitions": directory})
