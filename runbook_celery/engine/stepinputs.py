"""A step's inputs, checked on the worker just before its Bash starts.

Validation refuses what is wrong in the definition itself; what arrives at run time (an
output of an earlier step, a ``for_each`` item, an operator's ``retry --env``, a directory
that is missing on this worker) is checked here, so the step fails at once with a reason
and a sentence that names the source (``bad_input``, ``bad_working_dir``) instead of
failing deep inside ``Popen`` and being redelivered until it counts as ``worker_lost``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..definition import expressions as ex

Resolve = Callable[[ex.Ref], Any]
_NUL = "contains a NUL byte (\\0), which Bash cannot take; the step did not start"


def nul_source(
    spec: Mapping[str, Any],
    workflow_env: Mapping[str, str],
    override: Mapping[str, str],
    resolve: Resolve,
) -> str | None:
    """The first value this step would hand Bash that holds a NUL byte, named by where it
    came from; None when there is none."""
    for key, value in workflow_env.items():
        if "\x00" in value:
            return f"workflow env {key} {_NUL}"
    for key, template in spec.get("env", {}).items():
        for occ in ex.find(template):
            if "\x00" in ex.to_text(ex.evaluate(occ.node, resolve)):
                return f"the value of ${{{{ {occ.source} }}}} (in env {key}) {_NUL}"
        if "\x00" in template:
            return f"env {key} {_NUL}"
    for source in spec.get("vars", {}).values():
        if "\x00" in ex.to_text(ex.evaluate(ex.parse(source), resolve)):
            return f"the value of ${{{{ {source} }}}} (in run:) {_NUL}"
    for key, value in override.items():
        if "\x00" in key or "\x00" in value:
            return f"retry --env {key!r} {_NUL}"
    return None


def working_dir(
    spec: Mapping[str, Any], snapshot: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """Where the step runs, or why it cannot run: ``(directory, None)`` or ``(None, why)``.

    The directory is the step's ``working_dir`` (made absolute at trigger) or else the
    workflow file's folder. A missing one is never replaced by the worker's own directory:
    a step run in the wrong place can do real damage (``rm -rf build/``).
    """
    stated = spec.get("working_dir")
    path = stated or snapshot.get("base_dir")
    if not path:
        return None, None  # a snapshot without a folder (built in Python, no base_dir)
    if "${{" in path:
        return None, (
            f"working_dir {path!r} still holds a ${{{{ }}}} expression: working_dir takes a "
            "fixed path, expressions are not evaluated there"
        )
    if os.path.isdir(path):
        return path, None
    where = f"on this worker ({socket.gethostname()})"
    if stated:
        return None, f"working_dir {path} does not exist {where}"
    return None, (
        f"the workflow's folder {path}, where its steps run, does not exist {where}; "
        "give the workers the same folder or set an absolute working_dir"
    )
