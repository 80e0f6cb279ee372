"""One typed view of configuration, read from ``RUNBOOK_*`` environment variables once.

Every variable is checked when it is read (type, range, URL scheme), so a malformed value
is one clear error naming the variable (``InvalidSetting``, exit 2), never a traceback from
deep inside a worker. Connection URLs may also come from files (``RUNBOOK_REDIS_URL_FILE``,
``RUNBOOK_BROKER_URL_FILE``): a password kept in the worker's environment can be read by
any step (``/proc/PPID/environ``), one kept in a file can be kept from them (file mode and
``--uid``, or removing the file once the worker has started).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .errors import InvalidSetting
from .redaction import redact

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "runbook"
DEFAULT_QUEUE = "runbook"
DEFAULT_OUTPUT_LIMIT = 1024 * 1024  # bytes of $RUNBOOK_OUTPUT per step
DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024  # largest workflow file we parse
DEFAULT_VISIBILITY_TIMEOUT = 6 * 3600  # seconds; must exceed the longest step
DEFAULT_RETENTION = 7 * 86400  # seconds a finished run is kept
DEFAULT_LOG_LINES = 10_000  # lines of log kept per step
DEFAULT_LOG_BYTES = 4 * 1024 * 1024  # bytes of log text kept per step (its newest lines)
DEFAULT_STDERR_TAIL_LINES = 20
DEFAULT_LEASE_SECONDS = 30  # a running step refreshes its lease this often x3
DEFAULT_MAX_ATTEMPTS = 5  # deliveries of one step before it fails as worker_lost
DEFAULT_KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a step
DEFAULT_SHUTDOWN_GRACE = 60.0  # seconds a stopping worker lets running steps finish
DEFAULT_MAX_INSTANCES = 10_000  # instances of one matrix/for_each step
DEFAULT_CONTAINMENT = "auto"  # cgroup v2 where writable, else a child subreaper
CONTAINMENTS = ("auto", "cgroup", "subreaper")
# how long trigger --wait, watch, logs --follow and Run.wait() keep reconnecting to Redis
DEFAULT_CLIENT_RECONNECT_SECONDS = 60.0

# ---------------------------------------------------------------------------------------
# Network timing of every connection to Redis: the store's clients (redisconn.py), the
# result backend and the broker (app.py). Redis may sit on another host behind switches,
# firewalls and NAT, where a peer can vanish without a FIN or RST; each value bounds how
# long we wait on such a connection. docs/deployment.md lists them with these reasons.
#
# Connecting: SYNs lost on the way are resent after 1 s and again 2 s later, so 5 s
# connects through two lost SYNs and still reports a host that is down within 5 s.
CONNECT_TIMEOUT = 5.0
# Waiting for a reply: above our longest blocking read (XREAD BLOCK of the web pages'
# streams, 10 s) plus the first TCP retransmissions of a request or reply lost on a lossy
# link (about 3 s for four); a reply later than that is from a connection that is gone
# (Redis host crashed silently, NAT state dropped), and reconnecting beats waiting on it.
# The lease keeper does not rely on it: renewal has its own client that fails within
# 1/8 of the lease (redisconn.lease_client).
RESPONSE_TIMEOUT = 30.0
# TCP keepalive on idle connections: Linux waits 2 h before its first probe by default. A
# probe after 15 s idle, then every 5 s, 3 unanswered: an idle pooled connection to a
# vanished peer is dropped within 30 s, and the probes keep firewall/NAT state alive.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
# A pooled connection idle longer than this is PINGed before it is used again, so one that
# broke while idle (Redis restarted, failed over) is replaced before a command is sent on
# it, not found dead by that command. For kombu it also bounds how long its BRPOP
# connection may stay silent: a consumer on a half-open connection reconnects within
# 1 s (BRPOP) + 2 x 10 s, instead of 51 s at kombu's default of 25 s.
HEALTH_CHECK_INTERVAL = 10


def keepalive_options() -> dict[int, int]:
    """redis-py's ``socket_keepalive_options`` for the values above (Linux option names;
    a platform without them keeps its own timers)."""
    names = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
    }
    return {getattr(socket, n): v for n, v in names.items() if hasattr(socket, n)}


def redis_connection_options() -> dict[str, Any]:
    """The connection keyword arguments of every redis-py client of ours, as set above."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": RESPONSE_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


REDIS_SCHEMES = ("redis", "rediss")  # what both redis-py and Celery's Redis backend accept
BROKER_SCHEMES = (*REDIS_SCHEMES, "amqp", "amqps", "pyamqp")
# Key prefixes and queue names end up in Redis keys and SCAN patterns: no spaces or globs.
# Braces are allowed for Redis Cluster hash tags ("{runbook}").
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:{}-]{1,128}$")
YEAR = 366 * 86400

logger = logging.getLogger("runbook_celery.settings")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """Configuration for clients and workers; build it with ``Settings.from_env``."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    retention: int = DEFAULT_RETENTION
    log_lines: int = DEFAULT_LOG_LINES
    log_bytes: int = DEFAULT_LOG_BYTES
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    kill_grace: float = DEFAULT_KILL_GRACE
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_instances: int = DEFAULT_MAX_INSTANCES
    default_queue: str = DEFAULT_QUEUE
    flower_url: str | None = None  # base URL of Flower, for links to run pages in notifications
    worker_notifier: bool = True  # workers send notifications (else `runbook-celery notifier`)
    containment: str = DEFAULT_CONTAINMENT  # how steps are kept from outliving themselves
    # a client following a run keeps reconnecting for this long after losing Redis
    client_reconnect_seconds: float = DEFAULT_CLIENT_RECONNECT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every ``RUNBOOK_*`` variable.

        Raises:
            InvalidSetting: one or more variables are malformed; each is named.
        """
        reader = _Reader(os.environ if env is None else env)
        redis_url = reader.url("RUNBOOK_REDIS_URL", DEFAULT_REDIS_URL, REDIS_SCHEMES)
        settings = cls(
            redis_url=redis_url,
            broker_url=reader.url("RUNBOOK_BROKER_URL", redis_url, BROKER_SCHEMES),
            prefix=reader.name("RUNBOOK_PREFIX", DEFAULT_PREFIX),
            default_queue=reader.name("RUNBOOK_QUEUE", DEFAULT_QUEUE),
            output_limit=reader.whole("RUNBOOK_OUTPUT_LIMIT", DEFAULT_OUTPUT_LIMIT, 1, 2**29),
            max_file_bytes=reader.whole("RUNBOOK_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, 1, 2**30),
            visibility_timeout=reader.whole(
                "RUNBOOK_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, 1, YEAR
            ),
            retention=reader.whole("RUNBOOK_RETENTION", DEFAULT_RETENTION, 1, 10 * YEAR),
            log_lines=reader.whole("RUNBOOK_LOG_LINES", DEFAULT_LOG_LINES, 1, 10**8),
            # at least two of the longest lines (8,192 characters of up to 4 UTF-8 bytes)
            log_bytes=reader.whole("RUNBOOK_LOG_BYTES", DEFAULT_LOG_BYTES, 64 * 1024, 2**30),
            # the lease is refreshed every third of it, in whole seconds
            lease_seconds=reader.whole("RUNBOOK_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, 3, 86400),
            max_attempts=reader.whole("RUNBOOK_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, 1, 1000),
            kill_grace=reader.seconds("RUNBOOK_KILL_GRACE", DEFAULT_KILL_GRACE, 3600),
            shutdown_grace=reader.seconds("RUNBOOK_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE, 86400),
            max_instances=reader.whole("RUNBOOK_MAX_INSTANCES", DEFAULT_MAX_INSTANCES, 1, 10**6),
            flower_url=reader.web_url("RUNBOOK_FLOWER_URL"),
            worker_notifier=reader.flag("RUNBOOK_WORKER_NOTIFIER", True),
            containment=reader.choice("RUNBOOK_CONTAINMENT", DEFAULT_CONTAINMENT, CONTAINMENTS),
            client_reconnect_seconds=reader.seconds(
                "RUNBOOK_CLIENT_RECONNECT_SECONDS", DEFAULT_CLIENT_RECONNECT_SECONDS, 86400
            ),
        )
        if reader.problems:
            raise InvalidSetting(reader.problems)
        return settings

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]  # fields of several types

    def __repr__(self) -> str:
        """Like the dataclass's, with passwords in the URLs masked (reprs end up in logs)."""
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return redact(f"Settings({fields})")


class _Reader:
    """Reads variables one by one, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        raw = self.env.get(name)
        if raw is not None and not raw.strip():
            self.problems.append(f"{name} is set but empty; unset it to use the default")
            return None
        return None if raw is None else raw.strip()

    def _checked(self, name: str, default: _T, parse: Callable[[str], _T]) -> _T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}={redact(raw)!r}: {exc}")
            return default

    def whole(self, name: str, default: int, low: int, high: int) -> int:
        """A whole number from ``low`` to ``high``."""

        def parse(raw: str) -> int:
            if not re.fullmatch(r"[+-]?\d+", raw):
                raise ValueError(
                    f"not a whole number; write digits only, e.g. {name}={default} "
                    "(no units, signs or separators)"
                )
            value = int(raw)
            if not low <= value <= high:
                raise ValueError(f"out of range; it must be from {low} to {high}")
            return value

        return self._checked(name, default, parse)

    def seconds(self, name: str, default: float, high: float) -> float:
        """A number of seconds from 0 to ``high``; fractions allowed."""

        def parse(raw: str) -> float:
            try:
                number = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", raw)
                value = float(raw) if number else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"not a number of seconds; write e.g. {name}={default:g}")
            if not 0 <= value <= high:
                raise ValueError(f"out of range; it must be from 0 to {high:g} seconds")
            return value

        return self._checked(name, default, parse)

    def flag(self, name: str, default: bool) -> bool:
        """A yes/no setting: 1/0, true/false, yes/no or on/off."""

        def parse(raw: str) -> bool:
            value = raw.lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a yes/no value; write {name}=true or {name}=false")

        return self._checked(name, default, parse)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (case-insensitive)."""

        def parse(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError(f"not one of {', '.join(choices)}; write e.g. {name}={default}")
            return raw.lower()

        return self._checked(name, default, parse)

    def web_url(self, name: str) -> str | None:
        """An http(s) URL, kept without a trailing slash (optional)."""

        def parse(raw: str) -> str:
            try:
                parts = urlsplit(raw)
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            except ValueError:
                parts = None
            if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"not an http:// or https:// URL; write e.g. {name}=https://flower.example.com"
                )
            return raw.rstrip("/")

        return self._checked(name, None, parse)

    def name(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            if not NAME_PATTERN.match(raw):
                raise ValueError(
                    "use 1 to 128 letters, digits and _ . : - { } (it becomes part of Redis "
                    "keys and queue names)"
                )
            return raw

        return self._checked(name, default, parse)

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        """``NAME`` or the content of the file ``NAME_FILE`` names; not both."""
        file_var = f"{name}_FILE"
        if self.env.get(name) is not None and self.env.get(file_var) is not None:
            self.problems.append(f"set {name} or {file_var}, not both")
            return default
        path = self._raw(file_var)
        if path is not None:
            try:
                return _check_url(_read_url_file(path), schemes)
            except ValueError as exc:
                self.problems.append(f"{file_var}={path!r}: {exc}")
                return default
        return self._checked(name, default, lambda raw: _check_url(raw, schemes))


def _read_url_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    if not text:
        raise ValueError("the file is empty; it must hold one URL")
    if "\n" in text:
        raise ValueError("the file must hold one URL on one line")
    return text


def _check_url(url: str, schemes: tuple[str, ...]) -> str:
    shown = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"not a valid URL; write e.g. {DEFAULT_REDIS_URL}") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(
            f"unsupported URL scheme {parts.scheme + '://' if parts.scheme else '(none)'}; "
            f"use {shown}, e.g. {DEFAULT_REDIS_URL}"
        )
    return url


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return False  # not a URL: from_env reports it
    query = {k.lower() for k, _ in parse_qsl(parts.query)}
    return bool(password) or "password" in query


_warned: set[str] = set()


def warn_of_passwords_in_env(env: Mapping[str, str] | None = None) -> list[str]:
    """Log, once per process, each connection URL whose password sits in the environment.

    A worker calls this as it starts: its steps can read its environment
    (``/proc/PPID/environ``), so the password belongs in a ``*_URL_FILE``. Returns the
    variables warned about now.
    """
    e = os.environ if env is None else env
    warned = []
    for name in ("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"):
        value = e.get(name)
        if value is None or name in _warned or not _has_password(value):
            continue
        _warned.add(name)
        warned.append(name)
        logger.warning(
            "%s carries a password in the worker's environment, which every step can read "
            "(/proc/PPID/environ); put the URL in a file the steps cannot read and set "
            "%s_FILE to its path instead",
            name,
            name,
        )
    return warned


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use.

    Raises:
        InvalidSetting: a ``RUNBOOK_*`` variable is malformed.
    """
    return Settings.from_env()


# Connection URLs may carry passwords: steps never see them (nor where their files are).
HIDDEN_FROM_STEPS = (
    "RUNBOOK_REDIS_URL",
    "RUNBOOK_BROKER_URL",
    "RUNBOOK_REDIS_URL_FILE",
    "RUNBOOK_BROKER_URL_FILE",
)


def worker_environment() -> dict[str, str]:
    """The environment a step inherits from its worker (the only other os.environ read)."""
    env = dict(os.environ)
    for name in HIDDEN_FROM_STEPS:
        env.pop(name, None)
    return env
