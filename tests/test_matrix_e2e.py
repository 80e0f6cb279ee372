"""GitHub-style matrices end to end: include/exclude, object values, keys with '-'."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_include_exclude_with_object_values_runs_exactly_githubs_combinations(write_workflow):
    wf = write_workflow("""
name: gh-matrix
steps:
  - id: test
    matrix:
      python-version: ["3.11", "3.12"]
      os: [{name: linux, arch: x64}, {name: mac, arch: arm64}]
      exclude:
        - python-version: "3.11"
          os: {name: mac, arch: arm64}
      include:
        - python-version: "3.12"
          experimental: "yes"
        - python-version: "3.13"
          os: {name: linux, arch: x64}
    run: |
      v="${{ matrix.python-version }}/${{ matrix.os.name }}/${{ matrix.os.arch }}"
      echo "v=$v/${{ matrix.experimental }}" >> "$RUNBOOK_OUTPUT"
  - id: after
    needs: [test]
    run: echo "all=${{ steps.test.outputs.v }}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=90)
    assert final.status == "succeeded", final.to_dict()

    assert json.loads(final.steps["after"].outputs["all"]) == [
        "3.11/linux/x64/",
        "3.12/linux/x64/yes",
        "3.12/mac/arm64/yes",
        "3.13/linux/x64/",
    ]


def test_status_names_each_instance_by_its_values(write_workflow):

    wf = write_workflow("""
name: labels
steps:
  - id: test
    matrix: {python-version: ["3.12"], os: [linux]}
    run: "true"
""")
    run = submit(wf)
    run.wait(timeout=60)
    result = run_cli("status", run.id)
    assert "test[0] (python-version=3.12, os=linux)" in result.stdout, result.stdout + result.stderr
