"""Sending one notification to one URL: secrets filled in, a few attempts, errors masked.

The resolved URL lives only in memory here; what leaves (the error of a failed attempt)
is masked with the URL's secrets and the run's, and passwords in URLs are redacted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..definition.notifyconfig import (
    MissingSecret,
    TemplateError,
    apprise_messages,
    instantiate,
    resolve,
    scheme_of,
)
from .notifymessage import Message, masker

log = logging.getLogger("runbook_celery.notify")

ATTEMPTS = 3
RETRY_DELAYS = (1.0, 3.0)  # seconds before the 2nd and the 3rd attempt
# HTTP libraries apprise uses; at DEBUG they log request lines, with the URL's path
HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")


class _MaskSecrets(logging.Filter):
    """Masks the secrets of notify URLs in the records of the HTTP libraries (any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, None] = {}  # ordered: the oldest are forgotten first
        self.lock = threading.Lock()
        self.mask = masker([])

    def remember(self, secrets: tuple[str, ...]) -> None:
        with self.lock:
            for secret in secrets:
                self.secrets.pop(secret, None)
                self.secrets[secret] = None
            while len(self.secrets) > 1000:
                self.secrets.pop(next(iter(self.secrets)))
            self.mask = masker(list(self.secrets))

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = self.mask(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


_MASK_SECRETS = _MaskSecrets()


def _mask_http_logs(secrets: tuple[str, ...]) -> None:
    """Keep ``secrets`` out of the HTTP libraries' log records from now on."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _MASK_SECRETS not in logger.filters:
            logger.addFilter(_MASK_SECRETS)
    if secrets:
        _MASK_SECRETS.remember(secrets)


# What a send reports: None when the service took the notification, else why not.
Sender = Callable[[str, Message], str | None]


def apprise_send(url: str, message: Message) -> str | None:
    """Send with apprise; its own words when it fails (the caller masks them)."""
    plugin, said = instantiate(url)
    if plugin is None:
        return "apprise cannot use this URL: " + ("; ".join(said) or "no reason given")
    with apprise_messages() as said:
        try:
            ok = plugin.notify(
                body=message.body,
                title=message.title,
                notify_type=message.kind,  # a plain string: apprise 1.x and 2.x take it
                body_format="text",
            )
        except Exception as exc:  # a plugin bug must not end the notifier
            return f"{type(exc).__name__}: {exc}"
    return None if ok else ("; ".join(dict.fromkeys(said)) or "the service refused it")


@dataclass(frozen=True)
class Outcome:
    """One URL's result: sent or not, after how many attempts, and the masked error."""

    sent: bool
    attempts: int
    error: str | None = None


def deliver(
    template: str,
    message: Message,
    *,
    env: Mapping[str, str],
    send: Sender = apprise_send,
    still_mine: Callable[[], bool] = lambda: True,
    wait: Callable[[float], bool] = lambda seconds: False,
    mask: Callable[[str], str] = lambda text: text,
) -> Outcome | None:
    """Send ``message`` to one URL, trying ``ATTEMPTS`` times; None if we must stop.

    ``still_mine`` is asked before each attempt (False: another notifier has the event);
    ``wait`` sleeps between attempts and returns True when the notifier is stopping.
    Errors are masked with ``mask`` plus the URL's own secrets.
    """
    try:
        resolved = resolve(template, env)
    except (MissingSecret, TemplateError) as exc:
        return Outcome(False, 0, mask(str(exc)))
    _mask_http_logs(resolved.secrets)
    hide = masker(resolved.secrets)
    error = ""
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1 and wait(RETRY_DELAYS[min(attempt - 2, len(RETRY_DELAYS) - 1)]):
            return None
        if not still_mine():
            return None
        error = send(resolved.url, message) or ""
        if not error:
            return Outcome(True, attempt)
        error = mask(hide(error))
        log.info(
            "notification to a %s:// URL failed (attempt %d of %d): %s",
            scheme_of(template) or "secret",
            attempt,
            ATTEMPTS,
            error,
        )
    return Outcome(False, ATTEMPTS, error)
