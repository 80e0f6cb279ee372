"""Passwords in connection URLs never reach a message, however the URL is written."""

from __future__ import annotations

import string

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_celery.store.redisconn import redact

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("redis://:Pw@Leak3d@h", "redis://:***@h", "Leak3d"),
        ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0", "s3cret"),
        ("redis://:p%40ss%3Aw%2Frd@h:6379/0", "redis://:***@h:6379/0", "ss%3Aw"),
        ("redis://:raw:colon@h:6379/0", "redis://:***@h:6379/0", "colon"),
        ("redis://:raw/slash@h:6379/0", "redis://:***@h:6379/0", "slash"),
        ("redis://u:12/slash@h/0", "redis://u:***@h/0", "slash"),
        # a raw ? or # ends urlsplit's authority: the user name is masked along with it
        ("redis://:raw?query@h:6379/0", "redis://***@h:6379/0", "query"),
        ("redis://u:raw#hash@h:6379/0", "redis://***@h:6379/0", "hash"),
        ("redis://:a@b:c/d?e@h:6379/0", "redis://***@h:6379/0", "b:c/d"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1", "s3cret"),
        ("redis://h/0?db=1&Password=s3cret", "redis://h/0?db=1&Password=***", "s3cret"),
        ("redis://h/0?sasl_password=s3cret#x", "redis://h/0?sasl_password=***#x", "s3cret"),
        (
            "rediss://default:s3cret@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
            "rediss://default:***@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
            "s3cret",
        ),
        ("amqp://guest:s3cret@rabbit:5672//", "amqp://guest:***@rabbit:5672//", "s3cret"),
        (
            "amqp://u:one@h1;amqp://u:two@h2//",
            "amqp://u:***@h1;amqp://u:***@h2//",
            "two",
        ),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0", "s3cret"),
        ("REDIS://:s3cret@h", "REDIS://:***@h", "s3cret"),
    ],
)
def test_the_password_is_masked_and_the_rest_stays_readable(url, shown, secret):
    assert redact(url) == shown
    assert secret not in redact(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://user@h:6379/0",  # a user name alone is no secret
        "rediss://[::1]:6380/0",
        "file:///etc/hosts",
    ],
)
def test_urls_without_a_password_are_left_as_they_are(url):
    assert redact(url) == url


def test_an_at_sign_only_after_the_query_start_is_masked_rather_than_risk_a_leak():
    # `h:0?x@host` may be host h, port 0 and a query, or user h with password `0?x`:
    # we cannot tell, so everything up to the @ is masked
    assert redact("redis://h:0?x@host:6379/0") == "redis://***@host:6379/0"
    assert redact("redis://h:6379/0?ssl_ca_certs=/c/ca@x.pem") == "redis://***@x.pem"
    assert redact("redis://u:p@h:6379/0?ssl_ca_certs=/c/ca@x.pem") == "redis://***@x.pem"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "Redis at redis://:Pw@Leak3d@h:1/0 is unreachable: Error 111.",
            "Redis at redis://:***@h:1/0 is unreachable: Error 111.",
        ),
        (
            "cannot connect to 'redis://u:p@ss@h:6379/0' (timeout)",
            "cannot connect to 'redis://u:***@h:6379/0' (timeout)",
        ),
        ('{"url": "amqp://g:s3@h//", "n": 1}', '{"url": "amqp://g:***@h//", "n": 1}'),
        (
            "broker redis://:a@h/0, backend redis://:b@h/1",
            "broker redis://:***@h/0, backend redis://:***@h/1",
        ),
        ("no url here, just user@example.com", "no url here, just user@example.com"),
    ],
)
def test_urls_inside_longer_text_are_masked(text, shown):
    assert redact(text) == shown


def test_a_redis_py_error_about_a_url_with_a_password_is_masked():
    # whatever redis-py puts in its messages, our redaction keeps the password out
    url = "redis://:Pw@Leak3d@127.0.0.1:1/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        message = f"Redis at {redact(url)} is unreachable: {redact(str(exc))}"
    assert "Pw" not in message and "Leak3d" not in message
    assert "redis://:***@127.0.0.1:1/0" in message


# Printable ASCII without white space or quotes (those end a URL inside a message).
PASSWORD_CHARACTERS = sorted(set(string.printable) - set(string.whitespace) - set("\"'<>`"))


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(alphabet=st.sampled_from(PASSWORD_CHARACTERS), min_size=1, max_size=24),
    query=st.sampled_from(["", "?db=1", "?ssl_ca_certs=/c/ca@x.pem"]),
)
def test_no_password_survives_whatever_characters_it_holds(password, query):
    # Given a URL whose password holds any printable ASCII, raw, as users paste them
    after = f"redis.example:6379/0{query}"
    url = f"redis://user:{password}@{after}"
    shown = redact(url)
    # Then what follows the mask is a tail of what followed the password: none of it shows
    query_start = min(i for i in (url.find("?"), url.find("#"), len(url)) if i >= 0)
    ambiguous = "@" in url[query_start:]
    mask = "redis://***@" if ambiguous else "redis://user:***@"
    assert shown.startswith(mask)
    assert after.endswith(shown.removeprefix(mask))
    # and unless the URL is ambiguous the host, port, path and query stay readable
    if not ambiguous:
        assert shown == f"{mask}{after}"
    assert redact(f"error: {url} failed") == f"error: {shown} failed"
