"""Workflows the web tests trigger through Flower (written to a definitions folder)."""

from __future__ import annotations

from pathlib import Path

FAILING = """
name: web-failing
params:
  who: world
  target: {type: choice, options: [staging, prod], default: staging, description: where to}
steps:
  - id: build
    run: |
      echo "hello ${{ params.who }}"
      echo "artifact=app-${{ params.who }}.tgz" >> "$RUNBOOK_OUTPUT"
  - id: test
    needs: [build]
    run: |
      echo "running tests"
      echo "FAIL: test_login" >&2
      exit 3
  - id: lint
    needs: [build]
    run: echo "lint ok"
  - id: deploy
    needs: [test, lint]
    run: echo deploy
  - id: notify
    needs: [deploy]
    run: echo notified
"""

GATED = """
name: web-gated
steps:
  - id: build
    run: echo built
  - id: release
    needs: [build]
    approval: {prompt: "Release build 42 to prod?"}
    run: echo released
"""

DECIDE = """
name: web-decide
steps:
  - id: migrate
    on_failure: pause
    run: |
      echo "migrating" >&2
      test "${FIX:-0}" = 1
  - id: after
    needs: [migrate]
    run: echo "after ${{ steps.migrate.outputs.version }}"
"""

# Holds its first step until the file named by the `gate` param exists (the test creates it).
HOLD = """
name: web-hold
params:
  gate: /nonexistent
steps:
  - id: wait
    run: |
      echo "waiting for ${{ params.gate }}"
      while [ ! -e "${{ params.gate }}" ]; do sleep 0.05; done
  - id: after
    needs: [wait]
    run: echo after
"""

# A fan-out whose instances each wait for the gate file, so a page can watch them finish.
FANOUT = """
name: web-fanout
params:
  gate: /nonexistent
steps:
  - id: list
    run: echo 'items=["a","b","c","d","e","f"]' >> "$RUNBOOK_OUTPUT"
  - id: work
    needs: [list]
    for_each: ${{ steps.list.outputs.items }}
    max_parallel: 3
    run: |
      echo "working on ${{ item }}"
      while [ ! -e "${{ params.gate }}" ]; do sleep 0.05; done
  - id: report
    needs: [work]
    run: echo report
"""

ALL = {
    "failing.yaml": FAILING,
    "gated.yaml": GATED,
    "decide.yaml": DECIDE,
    "hold.yaml": HOLD,
    "fanout.yaml": FANOUT,
}


def write_definitions(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ALL.items():
        (folder / name).write_text(text)
    (folder / "broken.yaml").write_text(
        "name: web-broken\nsteps:\n  - id: a\n    needs: [nope]\n    run: x\n"
    )
    return folder
