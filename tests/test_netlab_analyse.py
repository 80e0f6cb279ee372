"""How scripts/netlab.py counts: from the lines steps log and the records Redis holds.

Pure functions over made-up files, so the counts the multi-host figures rest on are
specified without root or namespaces.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from netlab_analyse import requeues, verdict

RUN = "r" * 32


def _log(execs: Path, host: str, lines: list[tuple[str, int, str, float, int]]) -> None:
    """(step, attempt, kind, time, pid) lines as a step writes them."""
    execs.mkdir(exist_ok=True)
    with open(execs / f"exec-{host}.log", "a") as fh:
        for step, attempt, kind, t, pid in lines:
            fh.write(f"{RUN} {step} {host} {attempt} {kind} {t:.3f} {pid}\n")


def _result(recorded_attempt: str = "1") -> dict[str, Any]:
    step = {
        "status": "succeeded",
        "reason": None,
        "attempts": 1,
        "finished_at": None,
        "outputs": {"attempt": recorded_attempt},
    }
    record = {"status": "succeeded", "workflow": "wf", "steps": {"a": step}}
    return {
        "submitted": [{"run": RUN}],
        "runs": {RUN: {"record": record, "succeeded_events": {"a": 1}}},
    }


def test_a_copy_killed_after_logging_is_concurrent_with_the_next_one(tmp_path: Path) -> None:
    execs = tmp_path / "exec"
    # w1's copy is still logging at 11.0, after w2's copy started at 10.5; it never ends
    _log(execs, "w1", [("a", 1, "start", 8.0, 1), ("a", 1, "alive", 11.0, 1)])
    _log(execs, "w2", [("a", 2, "start", 10.5, 2), ("a", 2, "end", 12.0, 2)])
    v = verdict(execs, _result("2"), [])
    assert v["extra_executions"] == 1
    assert v["concurrent_copies"] == 1
    assert v["examples"]["concurrent"][0]["overlap_s"] == 0.5
    assert v["stale_results"] == 0
    assert v["succeeded"] == 1


def test_copies_one_after_the_other_are_extra_but_not_concurrent(tmp_path: Path) -> None:
    execs = tmp_path / "exec"
    _log(execs, "w1", [("a", 1, "start", 8.0, 1), ("a", 1, "alive", 9.0, 1)])
    _log(execs, "w2", [("a", 2, "start", 10.5, 2), ("a", 2, "end", 12.0, 2)])
    v = verdict(execs, _result("2"), [])
    assert (v["extra_executions"], v["concurrent_copies"], v["stale_results"]) == (1, 0, 0)
    assert v["killed_copies"] == 1


def test_a_result_from_a_superseded_attempt_is_stale(tmp_path: Path) -> None:
    execs = tmp_path / "exec"
    _log(execs, "w1", [("a", 1, "start", 8.0, 1), ("a", 1, "end", 9.0, 1)])
    _log(execs, "w2", [("a", 2, "start", 10.5, 2), ("a", 2, "end", 12.0, 2)])
    assert verdict(execs, _result("1"), [])["stale_results"] == 1


def test_an_open_run_is_hung_and_a_missing_record_too(tmp_path: Path) -> None:
    result = _result()
    result["runs"][RUN]["record"]["status"] = "running"
    result["runs"]["gone"] = {"error": "RunNotFound"}
    result["submitted"].append({"run": "gone"})
    v = verdict(tmp_path, result, [])
    assert set(v["hung"]) == {RUN, "gone"}
    assert v["succeeded"] == 0


def test_recovery_of_a_cut_is_until_the_step_was_put_back_or_ran_again(tmp_path: Path) -> None:
    execs = tmp_path / "exec"
    _log(execs, "w1", [("a", 1, "start", 99.0, 1), ("a", 1, "alive", 101.0, 1)])
    _log(execs, "w2", [("a", 2, "start", 110.0, 2), ("a", 2, "end", 111.0, 2)])
    cut = {"host": "w1", "t_start": 100.0, "t_end": 105.0}
    log = tmp_path / "worker-w2.log"
    log.write_text(
        "[2026-12-01 00:00:00,000: WARNING/MainProcess] put step a of run "
        f"{RUN} back on its queue (its worker was lost)\n"
    )
    back = requeues([log])[(RUN, "a")][0]
    fault = verdict(execs, _result("2"), [cut], {(RUN, "a"): [104.5]})["faults"][0]
    assert fault["cut_off_steps"] == 1
    assert fault["recovery_s"] == 4.5  # put back at 104.5
    assert fault["running_again_s"] == 10.0  # a free worker took it at 110
    assert back > 0
