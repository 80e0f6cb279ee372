"""The store's in-memory double (runbook_celery.store.memory) runs the store's Lua as Redis
does, for everything the scripts rely on: each check below runs on real Redis and on the
double with the same assertions. Where the double differs (its module docstring lists how),
a test shows that the scripts do not depend on the difference.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import redis

from runbook_celery.store import RunStore
from runbook_celery.store.events import StepStatus
from runbook_celery.store.memory import memory_redis, memory_store
from runbook_celery.store.scripts import PARTS, read

pytestmark = pytest.mark.timeout(30)


def _lua(client: redis.Redis, source: str, *keys: str) -> Any:
    return client.eval(source, len(keys), *keys)


@pytest.fixture
def key(store_client: redis.Redis) -> Any:
    name = f"rbtest-memory-{uuid.uuid4().hex}"
    yield name
    store_client.delete(name)


def _sources() -> dict[str, str]:
    """Every Lua file the store ships, comments removed (headers name things in prose)."""
    names = {*PARTS, *(p for parts in PARTS.values() for p in parts)} - {"constants"}
    return {n: re.sub(r"--[^\n]*", "", read(n)) for n in sorted(names)}


# ------------------------------------------------------------------ the double itself


def test_each_double_is_a_server_of_its_own() -> None:
    first, second = memory_redis(), memory_redis()
    first.set("k", "1")
    assert second.get("k") is None


def test_memory_store_is_the_real_store_on_the_double() -> None:
    store = memory_store(prefix="p", retention=60)
    assert isinstance(store, RunStore)
    assert (store.keys.prefix, store.retention) == ("p", 60)
    run = uuid.uuid4().hex
    snapshot = {"workflow": "wf", "params": {}, "mode": "dynamic", "steps": [{"id": "a"}]}
    store.create_run(run, snapshot, "sha")
    start = store.start_step(
        run, "a", token="t", needs=[], output_steps=[], workflow="wf",
        lease_seconds=30, max_attempts=3,
    )  # fmt: skip
    assert start.action == "start"
    store.finish_step(run, "a", token="t", status=StepStatus.SUCCEEDED, workflow="wf", attempt=1)
    assert store.get_run(run).status == "succeeded"
    assert 0 < store.r.ttl(store.keys.run(run)) <= 60  # the retention it was given


# ------------------------------------------------------------------ what the scripts rely on


def test_the_lua_is_5_1_as_redis_embeds(store_client: redis.Redis) -> None:
    assert _lua(store_client, "return _VERSION") == b"Lua 5.1"


def test_replies_convert_as_redis_converts_them(store_client: redis.Redis) -> None:
    """Numbers are cut to integers, a table ends at its first nil, false is nil, true is 1."""
    assert _lua(store_client, "return 3.7") == 3
    assert _lua(store_client, "return {1, 2, nil, 4}") == [1, 2]
    assert _lua(store_client, "return false") is None
    assert _lua(store_client, "return true") == 1
    assert _lua(store_client, "return {'a', {7, 'b'}}") == [b"a", [7, b"b"]]


def test_command_replies_reach_lua_as_on_redis(store_client: redis.Redis, key: str) -> None:
    """A missing field is false, a status reply is {ok=...}, a score is a string."""
    assert _lua(store_client, "return tostring(redis.call('HGET', KEYS[1], 'f'))", key) == b"false"
    assert _lua(store_client, "return {redis.call('HMGET', KEYS[1], 'a', 'b')[1] == false}", key)
    assert _lua(store_client, "return redis.call('TYPE', KEYS[1])['ok']", key) == b"none"
    assert _lua(store_client, "return redis.call('SET', KEYS[1], 'v')['ok']", key) == b"OK"
    store_client.delete(key)
    score = "redis.call('ZADD', KEYS[1], 1.5, 'm') return redis.call('ZSCORE', KEYS[1], 'm')"
    assert _lua(store_client, score, key) == b"1.5"
    assert _lua(store_client, "return #redis.call('TIME')") == 2


def test_a_failing_command_aborts_the_script_and_keeps_earlier_writes(
    store_client: redis.Redis, key: str
) -> None:
    """No rollback on either: why each script checks before its first write."""
    source = "redis.call('SET', KEYS[1], 'x') redis.call('HGET', KEYS[1], 'f') return 1"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        _lua(store_client, source, key)
    assert store_client.get(key) == b"x"
    with pytest.raises(redis.ResponseError, match="not an integer"):
        _lua(store_client, "return redis.call('HINCRBY', KEYS[1] .. ':h', 'n', 'x')", key)
    assert _lua(store_client, "return type(redis.pcall('HGET', KEYS[1], 'f'))", key) == b"table"


def test_error_replies_and_raised_errors_reach_the_caller(store_client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="boom"):
        _lua(store_client, "return redis.error_reply('boom')")
    with pytest.raises(redis.ResponseError):
        _lua(store_client, "error('plain')")


def test_a_script_cannot_create_a_global(store_client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError):
        _lua(store_client, "made_global = 1 return 1")


def test_cjson_decodes_what_the_scripts_decode(store_client: redis.Redis) -> None:
    """Lists of ids, parked Celery messages, secret lists; a bad value fails under pcall."""
    assert _lua(store_client, 'return cjson.decode(\'["a","b"]\')') == [b"a", b"b"]
    parked = json.dumps({"args": ["run", "step"], "kwargs": {}, "options": {"x": None}})
    args = "return cjson.decode(ARGV[1])['args'][2]"
    assert store_client.eval(args, 0, parked) == b"step"
    assert _lua(store_client, "return #cjson.decode('[]')") == 0
    null = "return tostring(cjson.decode('[null]')[1] == cjson.null)"
    assert _lua(store_client, null) == b"true"
    assert _lua(store_client, "return tostring(pcall(cjson.decode, 'nope'))") == b"false"


def test_cjson_encodes_a_list_of_strings_to_what_python_reads_back(
    store_client: redis.Redis,
) -> None:
    """The one thing the scripts encode (open_gate.lua: the secret values to mask). The
    bytes differ (Redis escapes '/' and keeps UTF-8 raw); what Python decodes does not."""
    values = ["a/b", "é ü", 'q"x', "new\nline", "\\", "1e400"]
    source = "return cjson.encode(cjson.decode(ARGV[1]))"
    assert json.loads(store_client.eval(source, 0, json.dumps(values))) == values


def test_streams_are_capped_as_the_prelude_asks(store_client: redis.Redis, key: str) -> None:
    source = (
        "for i = 1, 300 do redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100, '*', 'n', i) end "
        "return redis.call('XLEN', KEYS[1])"
    )
    assert 100 <= _lua(store_client, source, key) < 300


# ------------------------------------------------------------------ where the double differs


def test_the_scripts_encode_nothing_but_the_list_of_secrets_to_mask() -> None:
    """The double's cjson.encode differs for an empty table and for numbers: the scripts
    encode one value, a list of strings, and only when it is not empty."""
    encodes = {n: s.count("cjson.encode") for n, s in _sources().items() if "cjson.encode" in s}
    assert encodes == {"open_gate": 1}
    assert "if masked and #masked > 0 then" in _sources()["open_gate"]


def test_the_scripts_use_only_what_both_servers_provide() -> None:
    """The double lacks bit, struct and cmsgpack and has os, which Redis does not give a
    script; no script uses any of them, nor loads code."""
    banned = re.compile(
        r"\b(?:os|io|bit|struct|cmsgpack|debug|package)\.|"
        r"\b(?:require|loadstring|dofile|setfenv|getfenv|load)\s*\("
    )
    found = {n: banned.findall(s) for n, s in _sources().items() if banned.search(s)}
    assert found == {}
