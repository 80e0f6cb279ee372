"""`runbook-celery notifier`: send notifications from a process of their own (see notify.py).

Loaded by the ``cli`` group (``COMMAND_MODULES``) through ``COMMANDS``.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from ..core.settings import get_settings
from ..engine.notify import Notifier
from ..store.redisconn import backend_errors, get_client, ping, redact


@click.command("notifier")
def notifier() -> None:
    """Send the notifications runs ask for (`notify:`) until stopped (SIGTERM, Ctrl-C).

    Workers send them too unless started with RUNBOOK_WORKER_NOTIFIER=off; any number of
    notifiers and workers share the work and each notification is sent by one of them.
    Secrets in notify URLs (${{ secrets.NAME }}) are read from this process's environment.
    Exit 3 if Redis is unreachable at start; later outages are waited out.
    """
    settings = get_settings()
    ping(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    notifier = Notifier(get_client(settings), settings)
    with backend_errors("join the notifiers' group in Redis"):
        notifier.ensure_group()  # events from here on are ours (or another notifier's)

    def stop(signum: int, frame: FrameType | None) -> None:
        notifier.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(
        f"notifier {notifier.name}: sending notifications of {redact(settings.redis_url)} "
        f"(prefix {settings.prefix})",
        err=True,
    )
    notifier.run()


COMMANDS = [notifier]
