"""Scheduled runs: a definition's ``schedule:`` makes ``runbook-celery beat`` trigger it.

``schedule`` is a standard 5-field cron expression (minute hour day-of-month month
day-of-week, in UTC), a macro (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
``@yearly``) or ``@every <N>s|m|h`` for a fixed interval.

Design: Celery beat runs our scheduler over the definitions folder. When an entry is due,
the beat process itself calls ``api.submit`` on the file (validated and snapshotted at that
moment), so a scheduled run is an ordinary run: same record, events and history, plus the
run field ``trigger=schedule``. Workers need neither the folder nor an extra task, and a
definition that became invalid is reported by beat instead of failing on a worker.
Overlap ``skip`` (the default) starts nothing while the last scheduled run of that workflow,
remembered in Redis under ``<prefix>:schedule:<workflow>:last``, has not finished.
Run exactly one beat per Redis prefix, as with any Celery beat.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings, get_settings

if TYPE_CHECKING:  # Celery is imported only when a schedule is parsed: the loader stays light
    from celery.beat import Scheduler
    from celery.schedules import BaseSchedule

log = logging.getLogger("runbook_celery.beat")

SCHEDULED_TASK = "runbook.scheduled_trigger"  # entry name only: due entries are not sent
DEFAULT_RELOAD_SECONDS = 1.0  # longest beat sleep, so a changed folder is seen this fast
WORKFLOW_SUFFIXES = (".yaml", ".yml")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
CRON_FIELDS = (  # (name, crontab keyword, allowed range)
    ("minute", "minute", "0-59"),
    ("hour", "hour", "0-23"),
    ("day of month", "day_of_month", "1-31"),
    ("month", "month_of_year", "1-12 or jan-dec"),
    ("day of week", "day_of_week", "0-6 or sun-sat, Sunday = 0"),
)
_EVERY = re.compile(r"^@every\s+([0-9]+)\s*([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_schedule(text: str) -> BaseSchedule:
    """The Celery schedule for a ``schedule:`` value.

    Raises:
        ValueError: with a message naming the bad part, e.g. ``hour '25': ...``.
    """
    from celery.schedules import crontab, schedule

    spec = text.strip()
    every = _EVERY.match(spec)
    if every:
        seconds = int(every.group(1)) * _UNIT_SECONDS[every.group(2)]
        if seconds < 1:
            raise ValueError("@every needs a positive interval, e.g. '@every 30s'")
        return schedule(timedelta(seconds=seconds))
    if spec.startswith("@every"):
        raise ValueError("expected '@every <N>s', '@every <N>m' or '@every <N>h'")
    if spec.startswith("@"):
        if spec not in MACROS:
            known = ", ".join(sorted({*MACROS, "@every <N>s"}))
            raise ValueError(f"unknown macro {spec!r} (known: {known})")
        spec = MACROS[spec]
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(
            f"expected 5 cron fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}; or '@every <N>s' / '@hourly'"
        )
    for (label, keyword, allowed), value in zip(CRON_FIELDS, fields, strict=True):
        try:
            crontab(**{keyword: value})
        except (ValueError, TypeError) as exc:
            why = str(exc).rstrip(".")
            raise ValueError(f"{label} {value!r}: {why} (allowed: {allowed})") from None
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def cron_problem(text: str) -> str | None:
    """Why a ``schedule:`` value is invalid, or None if it is valid (for the loader)."""
    try:
        parse_schedule(text)
    except ValueError as exc:
        return str(exc)
    return None


def last_run_key(prefix: str, workflow: str) -> str:
    """Redis key holding the id of the last run the schedule started for ``workflow``."""
    return f"{prefix}:schedule:{workflow}:last"


def definition_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in WORKFLOW_SUFFIXES and p.is_file())


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
    schedule: BaseSchedule


def read_definitions(directory: Path) -> list[ScheduledDefinition]:
    """Files of ``directory`` that declare a valid schedule; problems are logged, not raised."""
    from .errors import InvalidDefinition
    from .loader import load_workflow

    found = []
    for path in definition_files(directory):
        try:
            wf = load_workflow(path).workflow
        except InvalidDefinition as exc:
            for problem in exc.problems:
                log.error("not scheduled: %s", problem.render())
            continue
        if wf.schedule is None:
            continue
        try:
            parsed = parse_schedule(wf.schedule)
        except ValueError as exc:
            log.error("not scheduled: %s: schedule: %s", path, exc)
            continue
        found.append(ScheduledDefinition(path, wf.name, wf.schedule, parsed))
    return found


def trigger_scheduled(path: Path, settings: Settings | None = None) -> str | None:
    """Start a run of the definition at ``path`` as the schedule would; None if skipped.

    Raises:
        InvalidDefinition: the file is no longer valid.
        BackendUnavailable: Redis or the broker did not answer.
    """
    from .api import submit
    from .events import RunStatus
    from .loader import load_workflow
    from .redisconn import get_client
    from .store import RunStore

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
    log.info("started %s run %s (schedule %r)", wf.name, run.id, wf.schedule)
    return run.id


@lru_cache(maxsize=1)
def _scheduler_base() -> type[Scheduler]:
    """The beat scheduler class, built on first use so that importing this module is cheap."""
    from celery.beat import Scheduler

    class DefinitionsScheduler(Scheduler):
        """Beat's schedule is the folder's definitions; re-read when any file there changes.

        Set ``definitions`` on a subclass (see ``scheduler_for``): beat builds the scheduler
        from its class alone.
        """

        definitions: Path = Path(".")
        max_interval = DEFAULT_RELOAD_SECONDS
        producer = None  # due entries are submitted in this process, never sent as tasks

        def setup_schedule(self) -> None:
            self._seen: tuple[tuple[str, int, int], ...] | None = None
            self._reload_if_changed()

        def _reload_if_changed(self) -> None:
            seen = _fingerprint(self.definitions)
            if seen == self._seen:
                return
            self._seen = seen
            entries = {
                str(d.path): {
                    "task": SCHEDULED_TASK,
                    "schedule": d.schedule,
                    "args": (str(d.path),),
                }
                for d in read_definitions(self.definitions)
            }
            self.merge_inplace(entries)
            self._heap = None  # entries changed in place or went away: rebuild the timing heap
            names = ", ".join(f"{Path(n).name} ({self.schedule[n].schedule})" for n in entries)
            log.info("schedules from %s: %s", self.definitions, names or "none")

        def tick(self, *args: Any, **kwargs: Any) -> float:
            self._reload_if_changed()
            return super().tick(*args, **kwargs)

        def apply_async(
            self, entry: Any, producer: Any = None, advance: bool = True, **_: Any
        ) -> None:
            entry = self.reserve(entry) if advance else entry
            path = Path(entry.args[0])
            try:
                trigger_scheduled(path)
            except Exception as exc:  # beat must keep serving the other schedules
                from .errors import InvalidDefinition

                if isinstance(exc, InvalidDefinition):
                    for problem in exc.problems:
                        log.error("not started: %s", problem.render())
                else:
                    log.error("not started: %s: %s", path, exc)

        @property
        def info(self) -> str:
            return f"    . definitions -> {self.definitions}"

    return DefinitionsScheduler


def scheduler_for(directory: Path) -> type[Scheduler]:
    """A beat scheduler class whose entries are the scheduled definitions of ``directory``.

    Beat instantiates the class itself, so the folder is bound as a class attribute.
    """
    return type("DefinitionsScheduler", (_scheduler_base(),), {"definitions": directory})
