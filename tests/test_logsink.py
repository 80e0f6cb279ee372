"""The log sink keeps a step's newest lines within RUNBOOK_LOG_LINES and RUNBOOK_LOG_BYTES,
and counts what it dropped for `logs` to say (fast: fakeredis)."""

from __future__ import annotations

import fakeredis
import pytest

from runbook_celery.cli.observe import gap_notice
from runbook_celery.store.keys import Keys
from runbook_celery.store.logs import Gap
from runbook_celery.store.logsink import StepLogSink, line_bytes

KEYS = Keys("sinkunit")


def sink(max_lines: int, max_bytes: int | None) -> tuple[StepLogSink, fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    return StepLogSink(client, KEYS, "r1", "s", max_lines, max_bytes=max_bytes), client


def stored(client: fakeredis.FakeRedis) -> list[str]:
    return [f[b"l"].decode() for _, f in client.xrange(KEYS.logs("r1", "s"))]


def test_the_byte_budget_keeps_the_newest_lines_that_fit():
    s, client = sink(max_lines=1000, max_bytes=1000)
    for i in range(50):
        s("stdout", f"{i:02d}" + "x" * 97)  # 100 bytes with its newline
    s.close()
    assert stored(client) == [f"{i:02d}" + "x" * 97 for i in range(40, 50)]
    step = client.hgetall(KEYS.step("r1", "s"))
    assert step[b"log_dropped_bytes"] == b"4000"
    assert (step[b"log_lines"], step[b"log_dropped"]) == (b"50", b"40")
    assert (step[b"log_max_lines"], step[b"log_max_bytes"]) == (b"1000", b"1000")


def test_the_line_cap_still_applies_and_its_bytes_are_counted():
    s, client = sink(max_lines=5, max_bytes=10**6)
    for i in range(8):
        s("stderr", str(i))
    s.close()
    assert stored(client) == ["3", "4", "5", "6", "7"]
    assert client.hget(KEYS.step("r1", "s"), "log_dropped_bytes") == b"6"  # 3 x "n\n"


def test_nothing_dropped_writes_no_counters():
    s, client = sink(max_lines=100, max_bytes=10**6)
    s("stdout", "one")
    s.close()
    assert client.hget(KEYS.step("r1", "s"), "log_dropped_bytes") is None


def test_a_line_counts_its_utf8_bytes_and_newline():
    assert line_bytes("é") == 3


@pytest.mark.parametrize(
    ("gap", "expected"),
    [
        (
            Gap("build", 1500, 3 * 1024 * 1024, 10_000, 4 * 1024 * 1024),
            "[build: 1,500 lines (3.0 MiB) not shown: a step keeps its last 10,000 lines and "
            "4.0 MiB of log (RUNBOOK_LOG_LINES, RUNBOOK_LOG_BYTES)]",
        ),
        (
            Gap("old", 7),  # recorded by a worker that did not count bytes
            "[old: 7 lines not shown: a step keeps its last 50 lines and 64.0 KiB of log "
            "(RUNBOOK_LOG_LINES, RUNBOOK_LOG_BYTES)]",
        ),
    ],
)
def test_logs_says_how_many_lines_and_bytes_were_dropped(gap, expected):
    assert gap_notice(gap, 50, 65536) == expected
