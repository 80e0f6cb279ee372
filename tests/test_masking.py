"""Secret values are masked as written and encoded, across line breaks and chunk cuts."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_celery.engine.outputstream import LINE_LIMIT
from runbook_celery.engine.runner import run_bash
from runbook_celery.plan.masking import MIN_ENCODED_LENGTH, Masker, encoded_forms
from runbook_celery.plan.runrecord import StepRecord

pytestmark = pytest.mark.timeout(60)

SECRET = "tok-9f8e7d6c5b4a"

secrets = st.text(min_size=MIN_ENCODED_LENGTH, max_size=40).filter(
    lambda s: len(s.encode()) >= MIN_ENCODED_LENGTH and "\x00" not in s
)
around = st.text(max_size=60)


def _leaks(masker_input: bytes, secret: str) -> list[bytes]:
    return [f for f in encoded_forms(secret) if f in masker_input]


def _b64(data: bytes, urlsafe: bool = False) -> bytes:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data)


@pytest.mark.parametrize(
    "shown",
    [
        SECRET,
        f"Bearer {SECRET}!",
        SECRET.encode().hex(),
        SECRET.encode().hex().upper(),
        quote(SECRET, safe=""),
        quote_plus(f"x {SECRET}"),
        "".join(f"%{b:02x}" for b in SECRET.encode()),
        _b64(SECRET.encode()).decode(),
        _b64(b"a" + SECRET.encode() + b"\n").decode(),
        _b64(b"ab" + SECRET.encode() + b"\n", urlsafe=True).decode(),
        SECRET[:5] + "\n" + SECRET[5:],
        SECRET[:1] + "\r\n" + SECRET[1:9] + "\n" + SECRET[9:],
    ],
)
def test_each_form_of_a_secret_is_masked(shown: str):
    masked = Masker([SECRET]).mask(f"before {shown} after")
    assert "***" in masked
    assert SECRET not in masked and SECRET[2:-2] not in masked
    for form in encoded_forms(SECRET):
        assert form.decode() not in masked


def test_base64_keeps_at_most_the_two_characters_that_mix_in_the_neighbours():
    for prefix in (b"", b"a", b"ab"):
        text = _b64(prefix + SECRET.encode() + b"\n").decode()
        masked = Masker([SECRET]).mask(text)
        before, _, after = masked.partition("***")
        assert len(before) <= len(_b64(prefix)) and len(after) <= 4


def test_short_values_are_masked_only_as_written():
    masker = Masker(["abc"])
    assert masker.mask("abc 616263 YWJj a\nbc") == "*** 616263 YWJj a\nbc"


def test_a_value_with_undecodable_bytes_is_masked():
    """os.environ keeps bytes that are not UTF-8 as surrogates (surrogateescape)."""
    value = b"s3cr\xffet-value".decode("utf-8", "surrogateescape")
    masker = Masker([value])
    assert masker.mask(f"x{value}y") == "x***y"
    assert masker.mask(b"s3cr\xffet-value".hex()) == "***"


def test_no_secrets_leave_text_alone():
    masker = Masker([])
    assert not masker and masker.mask("anything") == "anything"
    assert Masker([""]).mask("x") == "x"


def test_values_nested_in_outputs_and_lines_are_masked():
    masker = Masker([SECRET])
    value = [{"a": f"x{SECRET}", "n": 3}, [SECRET.encode().hex()]]
    assert masker.mask_value(value) == [{"a": "x***", "n": 3}, ["***"]]


@settings(max_examples=150, deadline=None)
@given(secret=secrets, left=around, right=around, inner_left=st.binary(max_size=5))
def test_no_encoded_form_survives_in_random_text(
    secret: str, left: str, right: str, inner_left: bytes
):
    raw = secret.encode()
    encoded = [
        secret,
        raw.hex(),
        raw.hex().upper(),
        quote(secret, safe=""),
        quote_plus(secret),
        _b64(inner_left + raw).decode(),
        _b64(inner_left + raw, urlsafe=True).decode(),
    ]
    masker = Masker([secret])
    for shown in encoded:
        out = masker.mask_bytes(f"{left}{shown}{right}".encode())
        assert _leaks(out, secret) == [], shown


@settings(max_examples=150, deadline=None)
@given(
    secret=secrets,
    left=around,
    right=around,
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=6),
    breaks=st.lists(st.integers(min_value=1, max_value=100), max_size=3),
)
def test_a_stream_cut_anywhere_masks_as_the_whole_text_does(
    secret: str, left: str, right: str, cuts: list[int], breaks: list[int]
):
    """Chunks arriving at any cut, and line breaks inside the secret (fold), change nothing."""
    hexed = secret.encode().hex()
    for b in sorted({b % len(hexed) for b in breaks if b % len(hexed)}, reverse=True):
        hexed = hexed[:b] + "\n" + hexed[b:]
    whole = f"{left}{secret}\n{hexed}{right}{secret}".encode()
    masker = Masker([secret])
    stream = masker.stream()
    out, pos = b"", 0
    for cut in sorted({c % (len(whole) + 1) for c in cuts}):
        out += stream.feed(whole[pos:cut])
        pos = cut
    out += stream.feed(whole[pos:]) + stream.finish()
    assert out == masker.mask_bytes(whole)
    assert _leaks(out, secret) == []
    assert secret.encode().hex().encode() not in out.replace(b"\n", b"")


def test_a_stream_holds_back_only_what_may_begin_a_secret():
    stream = Masker([SECRET]).stream()
    assert stream.feed(b"plain line\n") == b"plain line\n"
    assert stream.feed(b"ends with tok") == b"ends with "
    assert stream.feed(b"-9f8e7d6c5b4a and more\n") == b"*** and more\n"
    assert stream.feed(b"line then t") == b"line then "
    assert stream.idle() == b""  # output came since the last tick
    assert stream.idle() == b"t"  # a whole tick without: let go


def test_a_secret_around_the_line_truncation_is_masked_before_the_cut():
    """The secret used to be cut at 8,192 characters first, leaking its first part."""
    lines: list[str] = []
    pad = LINE_LIMIT - 3
    result = run_bash(
        f'printf "%{pad}s%s tail\\n" "" "$T"',
        {"T": SECRET, "PATH": "/usr/bin:/bin"},
        on_line=lambda _s, line: lines.append(line),
        masker=Masker([SECRET]),
    )
    assert result.ok
    assert lines[0].endswith("*") and len(lines[0]) == LINE_LIMIT
    assert SECRET[:3] not in lines[0][-10:]


def test_folded_and_encoded_output_of_bash_is_masked():
    lines: list[str] = []
    command = (
        'echo "plain $T"; printf %s "$T" | base64; printf %s "$T" | xxd -p; '
        'printf "x%sy" "$T" | fold -w 4; echo'
    )
    run_bash(
        command,
        {"T": SECRET, "PATH": "/usr/bin:/bin"},
        on_line=lambda _s, line: lines.append(line),
        masker=Masker([SECRET]),
    )
    text = "\n".join(lines)
    assert "plain ***" in text
    assert _leaks(text.encode(), SECRET) == [] and "x***y" in text.replace("\n", "")


def test_status_shows_secret_values_given_with_retry_env_as_stars():
    h = {"status": "pending", "env_override": json.dumps({"TOKEN": "n3w-s3cret", "FIX": "1"})}
    record = StepRecord.from_hash(h, frozenset({"n3w-s3cret"}))
    assert json.loads(record.to_dict()["control"]["env_override"]) == {
        "TOKEN": "***",
        "FIX": "1",
    }


def test_the_retry_gate_records_secret_values_in_the_same_transition():
    from runbook_celery.store import RunStore
    from runbook_celery.store.gates import Gates

    r = fakeredis.FakeRedis()
    store = RunStore(r, "t", 3600)
    k = store.keys
    r.hset(k.run("r1"), mapping={"status": "awaiting_decision", "workflow": "w"})
    r.hset(k.step("r1", "s"), mapping={"status": "awaiting_decision"})
    gates = Gates(store)
    env = {"TOKEN": "n3w-s3cret"}
    gates.open_gate(
        "r1",
        "s",
        expected="awaiting_decision",
        event="step_decision_retry",
        by="dave",
        field="env_override",
        value=json.dumps(env),
        secrets=["n3w-s3cret"],
    )
    assert store.secret_overrides("r1") == ["n3w-s3cret"]
    r.hset(k.step("r1", "s"), "status", "awaiting_decision")
    gates.open_gate(
        "r1",
        "s",
        expected="awaiting_decision",
        event="step_decision_retry",
        by="dave",
        field="env_override",
        value="{}",
        secrets=["an0ther-one"],
    )
    assert store.secret_overrides("r1") == ["n3w-s3cret", "an0ther-one"]
