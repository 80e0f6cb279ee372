"""`runbook-celery dead-letters`: the broker messages workers refused (see deadletter.py).

Loaded by the ``cli`` group (``COMMAND_MODULES``) through ``COMMANDS``.
"""

from __future__ import annotations

import json

import click
import redis

from ..core.errors import BackendUnavailable
from ..core.settings import get_settings
from ..store.deadletter import DeadLetter, DeadLetters, printable
from ..store.redisconn import get_client, redact

PREVIEW_CHARS = 200


def _render(letter: DeadLetter) -> list[str]:
    """Two lines per entry; the body is escaped, since it is whatever a sender put there."""
    task = f"  task={printable(letter.task)}" if letter.task else ""
    queue = printable(letter.queue) if letter.queue else "?"
    head = f"{letter.time}  queue={queue}{task}  {printable(letter.reason)}"
    text = letter.body if letter.body_encoding == "utf-8" else f"base64:{letter.body}"
    more = "..." if len(text) > PREVIEW_CHARS or letter.truncated else ""
    return [head, f"  {letter.size} bytes: {json.dumps(text[:PREVIEW_CHARS])}{more}"]


@click.command("dead-letters")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, newest first.")
@click.option("--purge", is_flag=True, help="Remove them (what was removed is printed).")
def dead_letters(as_json: bool, purge: bool) -> None:
    """Show the messages workers refused because they could not decode or run them.

    Each entry has the time, the queue, the reason and the raw body (up to 16 KiB; text,
    or base64 when it is not UTF-8). The newest 1,000 are kept.
    """
    settings = get_settings()
    letters_store = DeadLetters(get_client(settings), settings.prefix)
    try:
        letters = letters_store.purge() if purge else letters_store.list()
    except redis.RedisError as exc:
        raise BackendUnavailable(
            f"Redis at {redact(settings.redis_url)} is unreachable: {redact(str(exc))}"
        ) from None
    if as_json:
        click.echo(json.dumps([letter.to_dict() for letter in letters]))
        return
    for letter in letters:
        for line in _render(letter):
            click.echo(line)
    if purge:
        click.echo(f"purged {len(letters)} dead letter{'' if len(letters) == 1 else 's'}")
    elif not letters:
        click.echo("no dead letters", err=True)


COMMANDS: list[click.Command] = [dead_letters]
