"""Options shared by several CLI modules (a module of its own: cli.py imports the others)."""

from __future__ import annotations

import click

from ..core.errors import InvalidParams

timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop following after SECONDS and exit 5 if the run has not ended (it goes on).",
)


def check_timeout(timeout: float | None, wait: bool) -> None:
    """``--timeout`` bounds ``--wait``; alone it would silently do nothing."""
    if timeout is not None and not wait:
        raise InvalidParams("--timeout applies to --wait: add --wait, or drop --timeout")
