"""Finding passwords in connection URLs, so that credentials never reach users' eyes.

Pure text handling with no imports from the rest of the package, so that settings (which
must not depend on Redis) and every error path can use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# Where a URL starts in free text, and where it ends: at white space or a quote, or where
# the next URL of a failover list (``amqp://a;amqp://b``) starts. Only the boundaries come
# from this pattern; what is credentials inside a URL is decided by ``_redact_url``.
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<rest>(?:(?![;,][A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>`])*)"
)
_SECRET_PARAM_PARTS = ("pass", "pwd", "secret", "token", "auth", "credential")


def redact(text: str) -> str:
    """Replace the password of every URL inside ``text`` with ``***``.

    Covers ``user:password@`` (also with ``@ : / ? #`` in the password, raw or
    percent-encoded), query parameters such as ``?password=``, and any scheme (redis,
    rediss, unix, amqp, ...); the user name, host, port and path stay readable. Text is
    cut into URLs at white space and quotes, so URLs inside messages are found too.
    """
    return _URL.sub(lambda m: f"{m.group('scheme')}://{_redact_url(m.group('rest'))}", text)


def _redact_url(rest: str) -> str:
    """``rest`` is a URL after its ``scheme://``; returns it with its secrets masked."""
    end = _userinfo_end(rest)
    if end is None:
        authority, tail = "", rest
    else:
        at, sure = end
        user, colon, _password = rest[:at].partition(":")
        if not sure:
            authority = f"{MASK}@"
        elif colon:
            authority = f"{user}:{MASK}@"
        else:
            authority = f"{user}@"  # a user name alone is no secret
        tail = rest[at + 1 :]
    path, q, query = tail.partition("?")
    if q:
        query, h, fragment = query.partition("#")
        query = "&".join(_redact_param(p) for p in query.split("&")) + h + fragment
    return authority + path + q + query


def _userinfo_end(rest: str) -> tuple[int, bool] | None:
    """Where the credentials end (index of their ``@``) and whether the user name is sure.

    ``urlsplit`` ends the authority at the first ``/``, ``?`` or ``#``, so a password
    written raw with one of those would spill into the path or query: the credentials end
    at the last ``@`` before the query. An ``@`` after the query start is ambiguous (a raw
    ``?`` or ``#`` in a password, or an ``@`` in a query value such as a CA file path):
    everything up to the last one a host follows is masked, user name included, rather
    than risk showing part of a password.
    """
    query_start = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    later = [i for i in range(query_start, len(rest)) if rest[i] == "@"]
    if later:
        valid = [i for i in later if _host_follows(rest[i + 1 :])]
        return (valid or later)[-1], False
    before = rest.rfind("@", 0, query_start)
    return (before, True) if before >= 0 else None


def _host_follows(text: str) -> bool:
    """``text`` starts with a host[:port], or with the path of a host-less URL (unix)."""
    netloc = _authority(text)
    return _is_host_port(netloc) if netloc else text.startswith("/")


def _authority(text: str) -> str:
    """What ``urlsplit`` takes as the host part of ``scheme://`` + ``text``."""
    try:
        return urlsplit(f"x://{text}").netloc
    except ValueError:  # an unbalanced [ or ]: no host urlsplit accepts, so none at all
        return "["


def _is_host_port(netloc: str) -> bool:
    """A host with an optional port of digits.

    Stricter than ``urlsplit``, which also takes ``user:`` (empty port) for a host: when
    a password starts with ``#`` or ``?``, that is what is left in front of it.
    """
    try:
        parts = urlsplit(f"x://{netloc}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if netloc.endswith(":"):
        return False
    return bool(parts.hostname)


def _redact_param(param: str) -> str:
    key, eq, _value = param.partition("=")
    name = unquote(key).lower()
    if eq and any(part in name for part in _SECRET_PARAM_PARTS):
        return f"{key}={MASK}"
    return param
