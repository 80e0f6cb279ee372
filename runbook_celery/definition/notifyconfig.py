"""What `notify:` may say: the events users subscribe to, and the URLs notifications go to.

A notification URL is an apprise URL (``json://``, ``slack://``, ``mailto://``, ...). Its
secret parts are written ``${{ secrets.NAME }}``: NAME is an environment variable of the
process that sends (a worker, or ``runbook-celery notifier``), read when a notification is
sent, so a resolved URL is never stored, shown or logged. Checking a URL parses it with
apprise, which needs no network.

Apprise logs why it refused a URL or a notification, with the URL in the message. Its
records are collected here (per thread) for our own, masked messages and never propagate
to the process's log handlers.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from urllib.parse import quote

import apprise

from .vocabulary import EventType


class NotifyEvent(StrEnum):
    """What a ``notify:`` rule can be ``on``: the user-facing names of run and step events."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not started: its concurrency group was full
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_DECISION = "awaiting_decision"
    STEP_FAILED = "step_failed"


# The recorded event each name stands for (events.py); nothing else is notified.
NOTIFY_EVENT_OF: Mapping[str, NotifyEvent] = {
    EventType.WORKFLOW_STARTED: NotifyEvent.STARTED,
    EventType.WORKFLOW_SUCCEEDED: NotifyEvent.SUCCEEDED,
    EventType.WORKFLOW_FAILED: NotifyEvent.FAILED,
    EventType.WORKFLOW_CANCELLED: NotifyEvent.CANCELLED,
    EventType.WORKFLOW_SKIPPED: NotifyEvent.SKIPPED,
    EventType.STEP_AWAITING_APPROVAL: NotifyEvent.AWAITING_APPROVAL,
    EventType.STEP_AWAITING_DECISION: NotifyEvent.AWAITING_DECISION,
    EventType.STEP_FAILED: NotifyEvent.STEP_FAILED,
}

MAX_URLS = 50
_OPEN, _CLOSE = "${{", "}}"
_SECRET_REF = re.compile(r"\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PLAIN_WEB = ("http", "https")


@dataclass(frozen=True)
class SecretRef:
    """``${{ secrets.NAME }}`` in a URL: the value of NAME where the notification is sent."""

    name: str


class TemplateError(ValueError):
    """A notify URL whose ``${{ }}`` cannot be read; the message says what to write."""


def parse_template(text: str) -> list[str | SecretRef]:
    """A URL as literal pieces and secret references, in order.

    Raises:
        TemplateError: an unterminated ``${{`` or an expression other than a secret.
    """
    parts: list[str | SecretRef] = []
    pos = 0
    while (start := text.find(_OPEN, pos)) >= 0:
        end = text.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            raise TemplateError(f"unterminated {_OPEN} (missing '{_CLOSE}')")
        body = text[start + len(_OPEN) : end]
        match = _SECRET_REF.fullmatch(body)
        if match is None:
            raise TemplateError(
                f"{_OPEN}{body}{_CLOSE}: a notify URL may only use {_OPEN} secrets.NAME "
                f"{_CLOSE} (NAME an environment variable of the workers, listed under secrets:)"
            )
        if start > pos:
            parts.append(text[pos:start])
        parts.append(SecretRef(match.group(1)))
        pos = end + len(_CLOSE)
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def secret_names(text: str) -> list[str]:
    """The secrets a URL refers to (empty for a URL that cannot be parsed)."""
    try:
        return [p.name for p in parse_template(text) if isinstance(p, SecretRef)]
    except TemplateError:
        return []


class MissingSecret(LookupError):
    """A URL refers to a secret that is not set where the notification is sent."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"secret {name} is not set in the environment of the process that sends "
            "notifications (the workers, or runbook-celery notifier)"
        )
        self.name = name


@dataclass(frozen=True)
class ResolvedUrl:
    """A URL with its secrets filled in; ``secrets`` are what must never be shown."""

    url: str
    secrets: tuple[str, ...]


def resolve(text: str, env: Mapping[str, str]) -> ResolvedUrl:
    """Fill in the secrets of a URL from ``env``.

    A reference that is the whole URL is used as it is (the secret is the URL); inside a
    URL the value is percent-encoded, so any character of it stays one value.

    Raises:
        TemplateError: the URL cannot be read (validation refuses these).
        MissingSecret: a secret is not set or empty in ``env``.
    """
    parts = parse_template(text)
    secrets: list[str] = []
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = env.get(part.name)
        if not value:
            raise MissingSecret(part.name)
        secrets.append(value)
        out.append(value if len(parts) == 1 else quote(value, safe=""))
    return ResolvedUrl("".join(out), tuple(secrets))


# ---------------------------------------------------------------- apprise, quietly


class _Collector(logging.Handler):
    """Keeps apprise's records for the thread that asked (``apprise_messages``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        buffer = getattr(self.local, "records", None)
        if buffer is not None:
            buffer.append(record.getMessage())


_COLLECTOR = _Collector()


@contextmanager
def apprise_messages() -> Iterator[list[str]]:
    """Apprise's warnings and errors while the block runs (this thread only).

    The first use also stops apprise's records from reaching the process's handlers: they
    contain URLs, and a worker logs at INFO.
    """
    logger = logging.getLogger("apprise")
    if _COLLECTOR not in logger.handlers:
        logger.addHandler(_COLLECTOR)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)  # its DEBUG records format whole payloads
    buffer: list[str] = []
    _COLLECTOR.local.records = buffer
    try:
        yield buffer
    finally:
        _COLLECTOR.local.records = None


def instantiate(url: str) -> tuple[apprise.NotifyBase | None, list[str]]:
    """Apprise's plugin for ``url`` (None if apprise cannot use it) and why, in its words."""
    with apprise_messages() as said:
        plugin = apprise.Apprise.instantiate(url)
    return plugin, said


@lru_cache(maxsize=1)
def known_schemes() -> frozenset[str]:
    """Every URL scheme apprise has a service for."""
    out: set[str] = set()
    with apprise_messages():
        schemas = apprise.Apprise().details().get("schemas", [])
    for schema in schemas:
        for key in ("protocols", "secure_protocols"):
            value = schema.get(key) or ()
            out.update([value] if isinstance(value, str) else value)
    return frozenset(s.lower() for s in out)


def scheme_of(text: str) -> str | None:
    """The service scheme a URL names (``json``), None when a secret hides it."""
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def url_problem(text: str) -> str | None:
    """Why a notify URL cannot be used, in a sentence saying what to write; None if it can.

    URLs holding secrets are checked as far as their literal text allows: the scheme
    names a service. The rest is checked when the notification is sent.
    """
    try:
        parts = parse_template(text)
    except TemplateError as exc:
        return str(exc)
    if len(parts) == 1 and isinstance(parts[0], SecretRef):
        return None  # the whole URL is a secret
    literal_head = parts[0] if parts and isinstance(parts[0], str) else ""
    scheme = scheme_of(literal_head)
    if scheme is None:
        return (
            "not a notification URL: write SERVICE://..., e.g. json://host/path for a "
            "webhook or slack://TokenA/TokenB/TokenC (apprise's URL syntax)"
        )
    if scheme not in known_schemes():
        return _unknown_scheme(scheme)
    if any(isinstance(p, SecretRef) for p in parts):
        return None
    plugin, said = instantiate(text)
    if plugin is not None:
        return None
    why = "; ".join(dict.fromkeys(m.rstrip(".") for m in said if "Could not load" not in m))
    return (
        f"apprise cannot use this {scheme}:// URL"
        + (f": {why}" if why else "")
        + ("; see apprise's documentation of the service for its URL")
    )


def _unknown_scheme(scheme: str) -> str:
    if scheme in _PLAIN_WEB:
        return (
            f"{scheme}:// is no notification service: for a webhook write json://HOST/PATH "
            "(a JSON POST; jsons:// for HTTPS), form:// or xml://"
        )
    hint = difflib.get_close_matches(scheme, sorted(known_schemes()), n=1)
    return f"unknown notification service {scheme}://" + (
        f" (did you mean {hint[0]}://?)" if hint else " (apprise has no such service)"
    )


def rule_problems(
    rules: Sequence[tuple[Sequence[str], Sequence[str]]], declared_secrets: Sequence[str]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Secret references to names that ``secrets:`` does not list, with their YAML paths.

    ``rules`` are (on, urls) pairs. Listing them is required so that the values are also
    masked in step output, events and Flower.
    """
    out: list[tuple[tuple[str | int, ...], str]] = []
    declared = set(declared_secrets)
    for i, (_on, urls) in enumerate(rules):
        for j, url in enumerate(urls):
            for name in dict.fromkeys(secret_names(url)):
                if name not in declared:
                    out.append(
                        (
                            ("notify", i, "urls", j),
                            f"{_OPEN} secrets.{name} {_CLOSE}: {name} is not listed under "
                            f"secrets:; add it (secrets: [{name}]) so its value is masked "
                            "everywhere",
                        )
                    )
    return out
