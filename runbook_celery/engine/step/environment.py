"""Stage: the step's environment and inputs, made just before its Bash starts.

Values reach Bash as environment variables, never as shell text (``plan/compile.py``
placed the references); what arrived at run time is checked here (``stepinputs``), so a
bad input fails the step at once instead of deep inside ``Popen``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.settings import worker_environment
from ...definition import expressions as ex
from ...definition import shells
from ...plan.bashtext import substitute_text
from ...store.events import FailureReason
from .. import stepinputs
from ..runner import BashResult
from .condition import resolver, run_status

if TYPE_CHECKING:
    from .delivery import StepExecution

Resolve = stepinputs.Resolve


def environment(
    execution: StepExecution, need_outputs: dict[str, Any], override: dict[str, str]
) -> tuple[dict[str, str], Resolve]:
    """The Bash environment (the worker's, the workflow's, the step's, an operator's
    ``retry --env``, then ours), and the resolver it was filled from."""
    x = execution
    env = worker_environment()
    env.update(x.ctx.snapshot.env)
    resolve = resolver(x, need_outputs)
    for key, template in x.spec.env.items():
        env[key] = substitute_text(template, resolve)
    for var, source in x.spec.vars.items():
        env[var] = ex.to_text(ex.evaluate(ex.parse(source), resolve))
    env.update(override)  # an operator's `retry --env`
    env["RUNBOOK_RUN_ID"] = x.run_id
    env["RUNBOOK_STEP_ID"] = x.step_id
    env["RUNBOOK_WORKFLOW"] = x.ctx.workflow
    env["RUNBOOK_STEP_ATTEMPT"] = str(x.attempt or 1)
    env["RUNBOOK_RUN_STATUS"] = run_status(x)
    if x.spec.shell_script is not None:  # shell: sh/python/...: its text
        env[shells.SCRIPT_VAR] = x.spec.shell_script
    return env, resolve


def checked_inputs(
    execution: StepExecution, override: dict[str, str], resolve: Resolve
) -> BashResult | str | None:
    """The step's directory, or the failed result when an input cannot be used:
    a NUL byte that arrived at run time, a directory missing on this worker."""
    spec, snapshot = execution.spec, execution.ctx.snapshot
    nul = stepinputs.nul_source(spec.raw, snapshot.env, override, resolve)
    if nul is not None:
        return BashResult(None, reason=FailureReason.BAD_INPUT, message=nul)
    cwd, why = stepinputs.working_dir(spec.raw, snapshot.raw)
    if why is not None:
        return BashResult(None, reason=FailureReason.BAD_WORKING_DIR, message=why)
    return cwd
