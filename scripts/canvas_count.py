"""How many of the project's own workflows run as one Celery canvas, and why the rest do not.

Counts definitions/*.yaml and the workflows written inline in tests/*.py (string constants
holding a ``name:`` and ``steps:`` that load as they are: templates with placeholders and
files that need scripts are left out). Usage: ``python scripts/canvas_count.py``.
"""

from __future__ import annotations

import ast
import collections
import tempfile
import textwrap
from pathlib import Path

from runbook_celery.definition.loader import load_workflow
from runbook_celery.plan.compile import make_plan

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> tuple[str, str]:
    loaded = load_workflow(path)
    plan = make_plan(loaded.graph, loaded.workflow)
    return plan.mode, plan.reason


def _inline_workflows(tests: Path, into: Path) -> list[Path]:
    seen: set[str] = set()
    out = []
    for file in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if "steps:" not in node.value or "name:" not in node.value:
                continue
            text = textwrap.dedent(node.value)
            if text not in seen:
                seen.add(text)
                path = into / f"w{len(seen)}.yaml"
                path.write_text(text)
                out.append(path)
    return out


def _tally(title: str, paths: list[Path]) -> None:
    modes: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    for path in paths:
        try:
            mode, reason = _mode(path)
        except Exception:  # not a loadable workflow on its own (placeholders, scripts)
            continue
        modes[mode] += 1
        if mode != "canvas":
            reasons[reason] += 1
    total = sum(modes.values())
    print(f"{title}: {modes['canvas']} of {total} run as canvas")
    for reason, n in reasons.most_common():
        print(f"  {n} dynamic: {reason}")


def main() -> None:
    _tally("definitions/*.yaml", sorted((ROOT / "definitions").glob("*.yaml")))
    with tempfile.TemporaryDirectory() as tmp:
        _tally("workflows in tests/*.py", _inline_workflows(ROOT / "tests", Path(tmp)))


if __name__ == "__main__":
    main()
