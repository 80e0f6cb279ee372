"""`runbook-celery schedules`: each scheduled workflow of a folder with its next fire times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.timeout(60)

FLOW = """name: {name}
schedule: "{schedule}"
{extra}
steps:
  - id: a
    run: "true"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "nightly.yaml").write_text(
        FLOW.format(name="nightly", schedule="30 2 * * *", extra="timezone: America/New_York")
    )
    (tmp_path / "heartbeat.yml").write_text(
        FLOW.format(name="heartbeat", schedule="@every 30s", extra="overlap: allow")
    )
    (tmp_path / "plain.yaml").write_text("name: plain\nsteps:\n  - id: a\n    run: 'true'\n")
    return tmp_path


def test_lists_each_scheduled_workflow_with_fire_times_in_its_zone_and_utc(folder: Path):
    res = run_cli("schedules", "-d", str(folder), "-n", "3", "--after", "2026-03-07T00:00Z")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"heartbeat  @every 30s  overlap: allow  ({folder / 'heartbeat.yml'})",
        "  every 30 s, counted from when beat starts or last ran it",
        f"nightly  30 2 * * *  America/New_York  overlap: skip  ({folder / 'nightly.yaml'})",
        "  2026-03-07 02:30 EST  =  2026-03-07 07:30 UTC",
        "  2026-03-08 03:00 EDT  =  2026-03-08 07:00 UTC  (for 02:30, which the DST change skips)",
        "  2026-03-09 02:30 EDT  =  2026-03-09 06:30 UTC",
    ]
    assert res.stderr == ""


def test_json_gives_instants_in_utc_and_local_time(folder: Path):
    res = run_cli(
        "schedules", "-d", str(folder), "-n", "2", "--after", "2026-03-08T01:00-05:00", "--json"
    )
    assert res.returncode == 0, res.stderr
    listing = {item["workflow"]: item for item in json.loads(res.stdout)}
    assert listing["nightly"] == {
        "file": str(folder / "nightly.yaml"),
        "workflow": "nightly",
        "schedule": "30 2 * * *",
        "timezone": "America/New_York",
        "every_seconds": None,
        "overlap": "skip",
        "next": [
            {
                "at": "2026-03-08T07:00:00Z",
                "local": "2026-03-08T03:00:00-04:00",
                "skipped": "2026-03-08T02:30:00-05:00",
            },
            {"at": "2026-03-09T06:30:00Z", "local": "2026-03-09T02:30:00-04:00", "skipped": None},
        ],
    }
    assert listing["heartbeat"]["every_seconds"] == 30 and listing["heartbeat"]["next"] == []


def test_an_invalid_file_is_reported_at_its_line_and_the_rest_still_listed(folder: Path):
    (folder / "typo.yaml").write_text(
        FLOW.format(name="typo", schedule="0 3 * * *", extra="timezone: Europe/Berln")
    )
    res = run_cli("schedules", "-d", str(folder), "--after", "2026-01-01T00:00Z")
    assert res.returncode == 2
    assert f"{folder / 'typo.yaml'}:3: timezone: invalid timezone: unknown time zone" in res.stderr
    assert "did you mean 'Europe/Berlin'?" in res.stderr
    assert "nightly  30 2 * * *" in res.stdout and "typo" not in res.stdout


def test_a_time_without_an_offset_is_refused(folder: Path):
    res = run_cli("schedules", "-d", str(folder), "--after", "2026-03-07T00:00")
    assert res.returncode == 2
    assert "Invalid value for '--after': '2026-03-07T00:00' has no UTC offset" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_folder_without_schedules_says_so(tmp_path: Path):
    (tmp_path / "plain.yaml").write_text("name: plain\nsteps:\n  - id: a\n    run: 'true'\n")
    res = run_cli("schedules", "-d", str(tmp_path))
    assert res.returncode == 0
    assert res.stderr == f"no scheduled workflows in {tmp_path}\n"
