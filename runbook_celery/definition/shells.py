"""``shell:``: the interpreter a step's ``run`` (or ``script``) is given to.

``bash`` is the default and what the rest of the engine assumes (``bashplace`` places
``${{ }}`` values by Bash's grammar). ``sh``, ``python`` or a command template with ``{0}``
for the script file (``perl {0}``, GitHub's form) run the step's text as a file: the Bash
wrapper that every step starts with (guardian registration, large values) ends by exec'ing
the interpreter on a process substitution holding the text, so no file is left behind and
the text never becomes part of a command line. Values reach such steps through ``env:``
only: ``${{ }}`` in their ``run`` is refused at validation.
"""

from __future__ import annotations

import shlex

BASH = "bash"
# GitHub Actions' templates for its named shells (python3: Debian has no "python")
TEMPLATES = {"sh": "sh -e {0}", "python": "python3 {0}"}
SCRIPT_VAR = "RUNBOOK_STEP_SCRIPT"


def template_problem(shell: str) -> str | None:
    """Why ``shell`` is not a usable value, or None."""
    if shell == BASH or shell in TEMPLATES:
        return None
    try:
        words = shlex.split(shell)
    except ValueError as exc:
        return f"shell {shell!r} cannot be split into words: {exc}"
    if "{0}" not in words:
        return (
            f"shell {shell!r} is neither bash, sh nor python, nor a command with {{0}} for "
            "the script file, as in 'perl {0}'"
        )
    return None


def launcher(shell: str) -> str:
    """The Bash command that runs the step's text (in ``$RUNBOOK_STEP_SCRIPT``) with
    ``shell``: the interpreter's words quoted, ``{0}`` a process substitution."""
    words = shlex.split(TEMPLATES.get(shell, shell))
    argv = ['<(printf %s "$__runbook_script")' if w == "{0}" else shlex.quote(w) for w in words]
    return f'__runbook_script="${SCRIPT_VAR}"; unset {SCRIPT_VAR}; exec {" ".join(argv)}'
