"""Scheduled runs: `schedule:` parsing, the folder-backed beat scheduler, and beat end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from runbook_celery.client.schedule import DEFAULT_RELOAD_SECONDS, scheduler_for
from runbook_celery.definition.cron import schedule_problem

# ------------------------------------------------------------------ parsing (fast)


@pytest.mark.parametrize(
    "text",
    [
        "*/15 * * * *",
        "0 3 * * 1-5",
        "30 2 1 jan *",
        "0 0 * * sun",
        "@hourly",
        "@daily",
        "@every 1s",
        "@every 5m",
        "@every 2h",
        " @every 10 s ",
    ],
)
def test_valid_schedules_have_no_problem(text: str):
    assert schedule_problem(text, None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("61 * * * *", "minute '61'"),
        ("* 25 * * *", "hour '25'"),
        ("* * 0 * *", "day of month '0'"),
        ("* * * 13 *", "month '13'"),
        ("* * * * 8", "day of week '8'"),
        ("*/0 * * * *", "minute '*/0'"),
        ("* * * *", "expected 5 cron fields"),
        ("* * * * * *", "got 6"),
        ("", "expected 5 cron fields"),
        ("@every 0s", "positive interval"),
        ("@every 1d", "@every <N>s"),
        ("@every", "@every <N>s"),
        ("@often", "unknown macro '@often'"),
    ],
)
def test_invalid_schedules_say_which_part_is_wrong(text: str, expected: str):
    problem = schedule_problem(text, None)
    assert problem is not None and problem[0] == "schedule" and expected in problem[1], problem


def test_validate_reports_a_bad_schedule_at_its_line(write_workflow):
    wf = write_workflow(
        'name: x\ndescription: d\nschedule: "* 25 * * *"\nsteps:\n  - id: a\n    run: echo\n'
    )
    res = run_cli("validate", str(wf))
    assert res.returncode == 2
    assert f"{wf}:3: schedule: invalid schedule: hour '25'" in res.stderr, res.stderr


# --------------------------------------------------- folder-backed scheduler (fast)

YEARLY = """
name: {name}
schedule: "{schedule}"
steps:
  - id: s
    run: "true"
"""


def _scheduler(directory: Path):  # type: ignore[no-untyped-def]
    from runbook_celery.engine.app import app

    return scheduler_for(directory)(app=app)


def test_scheduler_reads_scheduled_definitions_and_leaves_out_the_rest(tmp_path: Path):
    # Given a folder with a scheduled file, an unscheduled one, a bad cron and an invalid file
    (tmp_path / "a.yaml").write_text(YEARLY.format(name="a", schedule="0 0 1 1 *"))
    (tmp_path / "plain.yaml").write_text("name: plain\nsteps:\n  - id: s\n    run: 'true'\n")
    (tmp_path / "bad-cron.yml").write_text(YEARLY.format(name="b", schedule="0 0 32 1 *"))
    (tmp_path / "broken.yaml").write_text("name: [\n")
    (tmp_path / "notes.txt").write_text(YEARLY.format(name="t", schedule="@hourly"))
    # When beat's scheduler starts on it
    sched = _scheduler(tmp_path)
    # Then only the valid scheduled definition is an entry, named by its path
    assert list(sched.schedule) == [str(tmp_path / "a.yaml")]
    entry = sched.schedule[str(tmp_path / "a.yaml")]
    assert entry.args == (str(tmp_path / "a.yaml"),)
    assert sched.max_interval == DEFAULT_RELOAD_SECONDS


def test_scheduler_rereads_the_folder_when_a_file_is_added_edited_or_removed(tmp_path: Path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(YEARLY.format(name="a", schedule="0 0 1 1 *"))
    sched = _scheduler(tmp_path)
    assert list(sched.schedule) == [str(a)]
    # added
    b.write_text(YEARLY.format(name="b", schedule="@every 3600s"))
    sched.tick()
    assert sorted(sched.schedule) == [str(a), str(b)]
    # edited: the new schedule replaces the old one
    a.write_text(YEARLY.format(name="a", schedule="0 12 * * 1-5"))
    sched.tick()
    assert sched.schedule[str(a)].schedule.cron.hours == (12,)
    # edited into an invalid schedule: left out
    b.write_text(YEARLY.format(name="b", schedule="@every 0s"))
    sched.tick()
    assert list(sched.schedule) == [str(a)]
    # removed
    a.unlink()
    sched.tick()
    assert dict(sched.schedule) == {}


ZONED = """
name: {name}
schedule: "{schedule}"
timezone: America/New_York
steps:
  - id: s
    run: "true"
"""


class FrozenClock:
    """Beat's only clock (``app.now``), moved by hand: it advances only when beat sleeps."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        # a real sleep always takes a little time, even sleep(0)
        self.moment += timedelta(seconds=max(seconds, 0.001))


def _run_beat_until(
    directory: Path, clock: FrozenClock, end: datetime, monkeypatch
) -> dict[str, list[datetime]]:  # type: ignore[no-untyped-def]
    """Celery beat's own loop (tick, then sleep what it asks) over our scheduler and a frozen
    clock; returns when each definition would have been triggered."""
    from runbook_celery.client import schedule as schedule_module
    from runbook_celery.engine.app import app

    fired: dict[str, list[datetime]] = {}
    monkeypatch.setattr(app, "now", clock)
    monkeypatch.setattr(
        schedule_module,
        "trigger_scheduled",
        lambda path: fired.setdefault(Path(path).stem, []).append(clock()),
    )
    # a day-long max interval: beat sleeps until the next fire instead of re-reading the folder
    scheduler = type("DayLong", (scheduler_for(directory),), {"max_interval": 86400.0})(app=app)
    while clock() < end:
        clock.sleep(scheduler.tick())
    return fired


def _near(fired: list[datetime], expected: list[datetime]) -> bool:
    """Each fire within a second of its expected instant (beat wakes 10 ms early, re-checks)."""
    return len(fired) == len(expected) and all(
        timedelta(0) <= f - e < timedelta(seconds=1) for f, e in zip(fired, expected, strict=True)
    )


@pytest.mark.timeout(60)
def test_beat_fires_a_new_york_schedule_at_the_right_utc_instants_across_dst(
    tmp_path: Path, monkeypatch
):
    # Given a nightly 02:30 and an hourly schedule in New York, and a clock frozen before
    # the spring-forward night of 8 March 2026 (02:00 EST becomes 03:00 EDT)
    (tmp_path / "nightly.yaml").write_text(ZONED.format(name="nightly", schedule="30 2 * * *"))
    (tmp_path / "hourly.yaml").write_text(ZONED.format(name="hourly", schedule="@hourly"))
    clock = FrozenClock(datetime(2026, 3, 7, 0, 0, tzinfo=UTC))
    # When Celery beat runs on our scheduler until 10 March
    fired = _run_beat_until(tmp_path, clock, datetime(2026, 3, 10, tzinfo=UTC), monkeypatch)
    # Then 02:30 EST (07:30Z), the jump at 03:00 EDT (07:00Z) for the skipped 02:30, 02:30 EDT
    nightly = [
        datetime(2026, 3, d, h, m, tzinfo=UTC) for d, h, m in ((7, 7, 30), (8, 7, 0), (9, 6, 30))
    ]
    assert _near(fired["nightly"], nightly), fired["nightly"]
    # and the hourly one every real hour: nothing lost in the skipped hour, nothing doubled
    start = datetime(2026, 3, 7, 1, tzinfo=UTC)
    hourly = [start + timedelta(hours=h) for h in range(71)]
    assert _near(fired["hourly"], hourly), fired["hourly"][:5]


@pytest.mark.timeout(60)
def test_beat_fires_a_repeated_wall_clock_time_once_when_clocks_fall_back(
    tmp_path: Path, monkeypatch
):
    # New York, 1 November 2026: 01:00-02:00 happens twice (05:00-06:00Z EDT, 06:00-07:00Z EST)
    (tmp_path / "nightly.yaml").write_text(ZONED.format(name="nightly", schedule="30 1 * * *"))
    (tmp_path / "quarter.yaml").write_text(ZONED.format(name="quarter", schedule="*/15 1 * * *"))
    clock = FrozenClock(datetime(2026, 10, 31, 12, 0, tzinfo=UTC))
    fired = _run_beat_until(tmp_path, clock, datetime(2026, 11, 2, 12, tzinfo=UTC), monkeypatch)
    nightly = [datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 2, 6, 30, tzinfo=UTC)]
    assert _near(fired["nightly"], nightly), fired["nightly"]
    # */15 in hour 1 is not a fixed time: both passes of the repeated hour get their quarters
    first = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)
    quarters = [first + timedelta(minutes=15 * q) for q in range(8)]
    quarters += [
        datetime(2026, 11, 2, 6, 0, tzinfo=UTC) + timedelta(minutes=15 * q) for q in range(4)
    ]
    assert _near(fired["quarter"], quarters), fired["quarter"]


@pytest.mark.timeout(60)
def test_beat_fires_on_the_day_of_month_or_the_day_of_week_as_cron_does(
    tmp_path: Path, monkeypatch
):
    # Given "0 0 1 * 1": standard cron runs it on the 1st of each month and on every Monday
    (tmp_path / "either.yaml").write_text(YEARLY.format(name="either", schedule="0 0 1 * 1"))
    clock = FrozenClock(datetime(2026, 5, 31, 12, tzinfo=UTC))
    # When beat runs through June into July 2026
    fired = _run_beat_until(tmp_path, clock, datetime(2026, 7, 2, tzinfo=UTC), monkeypatch)
    # Then it fires on Mondays 1, 8, 15, 22 and 29 June and on Wednesday 1 July
    days = [(6, 1), (6, 8), (6, 15), (6, 22), (6, 29), (7, 1)]
    assert _near(fired["either"], [datetime(2026, m, d, tzinfo=UTC) for m, d in days]), fired


# ------------------------------------------------------------ beat end to end (slow)


class BeatProcess:
    """`runbook-celery beat --definitions DIR` as a subprocess, with the session's settings."""

    def __init__(self, directory: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runbook_celery", "beat", "--definitions", str(directory)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def beat_in(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[BeatProcess] = []

    def _start(directory: Path) -> BeatProcess:
        beat = BeatProcess(directory, tmp_path / f"beat-{len(started)}.log")
        started.append(beat)
        return beat

    yield _start
    for beat in started:
        beat.stop()


def _now_id() -> str:
    return f"{int(time.time() * 1000)}-0"


def wait_for_runs(
    store,  # type: ignore[no-untyped-def]
    workflow: str,
    count: int,
    since: str,
    beat: BeatProcess,
    etype: str = "workflow_succeeded",
    timeout: float = 60,
) -> list[str]:
    """Ids of the first ``count`` runs of ``workflow`` with an ``etype`` event after ``since``."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    for _eid, event in store.follow_events(None, since=since, block_ms=500):
        if event.get("workflow") == workflow and event.get("type") == etype:
            found.append(event["run_id"])
            if len(found) >= count:
                return found
        if beat.proc.poll() is not None:
            raise AssertionError(f"beat exited: {beat.text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(found)}/{count} {etype} of {workflow} in {timeout}s; "
                f"beat log:\n{beat.text()[-3000:]}"
            )
    raise AssertionError("event stream ended")


def _finished_runs_of(store, workflow: str):  # type: ignore[no-untyped-def]
    """Every run of ``workflow`` in history, each waited for to its end, oldest first."""
    from runbook_celery.client.run import Run
    from runbook_celery.store.history import list_runs

    summaries = list_runs(store, workflow=workflow, limit=1000)
    records = [Run(s.id).wait(timeout=30) for s in summaries]
    return sorted(records, key=lambda r: r.created_at or "")


EVERY_SECOND = """
name: {name}
schedule: "@every 1s"
{extra}
steps:
  - id: work
    run: |
      sleep {seconds}
      echo "run=$RUNBOOK_RUN_ID" >> "$RUNBOOK_OUTPUT"
"""


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_beat_starts_normal_runs_on_schedule_and_picks_up_added_files(
    tmp_path: Path, store, beat_in
):
    # Given a definitions folder with one workflow scheduled every second
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "tick.yaml").write_text(EVERY_SECOND.format(name="sched-tick", extra="", seconds=0))
    since = _now_id()
    # When beat runs on it
    beat = beat_in(folder)
    # Then at least two runs start and succeed, and they are ordinary runs
    run_ids = wait_for_runs(store, "sched-tick", 2, since, beat)
    assert len(set(run_ids)) == 2
    for run_id in run_ids:
        record = store.get_run(run_id)
        assert record.status == "succeeded"
        assert record.steps["work"].outputs == {"run": run_id}
        types = [e["type"] for _, e in store.events(run_id)]
        assert types[0] == "workflow_started" and types[-1] == "workflow_succeeded"
        assert store.r.hget(store.keys.run(run_id), "trigger") == b"schedule"
    history = {r.id for r in _finished_runs_of(store, "sched-tick")}
    assert set(run_ids) <= history
    # When a second scheduled definition is added to the folder while beat runs
    added_since = _now_id()
    (folder / "added.yml").write_text(EVERY_SECOND.format(name="sched-added", extra="", seconds=0))
    # Then beat picks it up and runs it too
    added = wait_for_runs(store, "sched-added", 1, added_since, beat, timeout=30)
    assert store.get_run(added[0]).status == "succeeded"
    assert "schedules from" in beat.text() and "added.yml" in beat.text()


def _overlaps(records) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Pairs of runs whose steps ran at the same time (records ordered by creation)."""
    out = []
    for i, earlier in enumerate(records):
        for later in records[i + 1 :]:
            if later.steps["work"].started_at < earlier.steps["work"].finished_at:
                out.append((earlier.id, later.id))
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_overlap_skip_never_starts_a_scheduled_run_while_the_last_one_runs(
    tmp_path: Path, store, beat_in
):
    # Given a workflow scheduled every second whose run takes 2 seconds (overlap: skip)
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "slow.yaml").write_text(
        EVERY_SECOND.format(name="sched-skip", extra="overlap: skip", seconds=2)
    )
    beat = beat_in(folder)
    # When two of its runs have succeeded
    wait_for_runs(store, "sched-skip", 2, _now_id(), beat)
    beat.stop()
    # Then no run started before the previous one finished, and due ticks were skipped
    records = _finished_runs_of(store, "sched-skip")
    assert len(records) >= 2
    assert all(r.status == "succeeded" for r in records)
    assert _overlaps(records) == []
    assert "skipped sched-skip: its last scheduled run" in beat.text()


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_overlap_allow_starts_runs_while_earlier_ones_still_run(tmp_path: Path, store, beat_in):
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "slow.yaml").write_text(
        EVERY_SECOND.format(name="sched-allow", extra="overlap: allow", seconds=2)
    )
    beat = beat_in(folder)
    wait_for_runs(store, "sched-allow", 2, _now_id(), beat)
    beat.stop()
    records = _finished_runs_of(store, "sched-allow")
    assert all(r.status == "succeeded" for r in records)
    assert _overlaps(records), [(r.created_at, r.finished_at) for r in records]


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.usefixtures("worker")
def test_beat_triggers_a_zoned_cron_schedule_at_the_minute(tmp_path: Path, store, beat_in):
    # Given a definition due every minute in Kathmandu (UTC+05:45, so a zone is really applied:
    # its minutes still start at :00 seconds)
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "minute.yaml").write_text(
        'name: sched-minute\nschedule: "* * * * *"\ntimezone: Asia/Kathmandu\n'
        'steps:\n  - id: work\n    run: echo "run=$RUNBOOK_RUN_ID" >> "$RUNBOOK_OUTPUT"\n'
    )
    since = _now_id()
    # When real Celery beat runs on the folder
    beat = beat_in(folder)
    # Then a normal run is started at the start of the next minute
    (run_id,) = wait_for_runs(store, "sched-minute", 1, since, beat, timeout=90)
    record = store.get_run(run_id)
    assert record.status == "succeeded"
    created = datetime.fromisoformat(record.created_at.replace("Z", "+00:00"))
    assert created.second < 5, record.created_at  # beat wakes at the minute, not on a poll
    assert "minute.yaml [* * * * * (Asia/Kathmandu)]" in beat.text()
    assert "(schedule '* * * * *' in Asia/Kathmandu)" in beat.text()
