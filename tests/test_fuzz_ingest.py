"""Fuzzing the ingest parser (pure): any body is either a valid event within every limit of
API.md or an InputError naming known fields; never another exception."""

from __future__ import annotations

import time
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.event_input import (
    MAX_IMPORT_FUTURE_SECONDS,
    MAX_NAME_CHARS,
    MAX_PROP_KEY_BYTES,
    MAX_PROP_VALUE_BYTES,
    MAX_PROPS,
    MAX_URL_BYTES,
    MIN_IMPORT_EPOCH,
    parse_event_body,
    parse_import_line,
)
from engine.rejections import KNOWN_FIELDS

FIELDS = ["name", "n", "url", "u", "domain", "d", "referrer", "r", "props", "p",
          "interactive", "i", "revenue", "$", "vitals"]  # fmt: skip
URLS = st.sampled_from([
    "https://ex.test/a?utm_source=x", "http://www.ex.test", "javascript:alert(1)", "ftp://ex.test/",
    "data:text/html,x", "https://", "http://[::1", "//ex.test/", "https://ex.test/" + "a" * 2100,
    "https://ex.test/%ff%00", "HTTPS://EX.TEST/Caps", "https://ex.test:99999/", "mailto:a@b",
])  # fmt: skip
TEXT = st.text(max_size=30) | st.sampled_from(["", " ", "\ud800", "x" * 121, "x" * 2001])
LEAF = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | URLS
JSON = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
PROPS = (
    st.dictionaries(TEXT, LEAF, max_size=40)
    | st.dictionaries(st.text(max_size=3), JSON, max_size=3)
    | st.just({"k" * 301: "v"})
    | st.just({"deep": [[[[[[[[[[1]]]]]]]]]]})
    | TEXT
)
VALID = st.fixed_dictionaries(
    {"n": st.sampled_from(["pageview", "signup"]), "u": st.just("https://ex.test/p")}
)


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with some fields replaced by anything."""
    obj: dict[str, Any] = dict(draw(VALID))
    for key in draw(st.lists(st.sampled_from([*FIELDS, "x"]), max_size=3)):
        obj[key] = draw(URLS if key in ("u", "url") else PROPS if key in ("p", "props") else JSON)
    return obj


raw_bodies = st.one_of(
    st.binary(max_size=200),
    event_objects().map(
        lambda o: orjson.dumps(o, option=orjson.OPT_NON_STR_KEYS) if _dumpable(o) else b"{"
    ),
    event_objects().map(lambda o: (orjson.dumps(o) if _dumpable(o) else b"{")[:-3]),
    st.just(b"\xff\xfe" + b'{"n":"pageview"}'),
    st.just(b'{"n":"pageview","u":"https://ex.test/","p":' + b"[" * 2000 + b"]" * 2000 + b"}"),
)


def _dumpable(obj: Any) -> bool:
    try:
        orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


SEEN = {"accepted": 0, "rejected": 0}


def check_event_invariants(event: Any) -> None:
    assert 0 < len(event.name) <= MAX_NAME_CHARS
    assert event.url.lower().startswith(("http://", "https://"))
    assert len(event.url.encode()) <= MAX_URL_BYTES
    assert len(event.props) <= MAX_PROPS
    for key, value in event.props.items():
        assert len(key.encode()) <= MAX_PROP_KEY_BYTES
        assert len(value.encode()) <= MAX_PROP_VALUE_BYTES
    assert event.domains and all(d for d in event.domains)
    # Everything must encode to the UTF-8 of the hits topic.
    orjson.dumps([event.name, event.url, event.page, event.referrer, event.props, event.domains])


@settings(max_examples=1200, deadline=None)
@given(body=raw_bodies | event_objects())
def test_event_parser_accepts_within_limits_or_names_the_field(
    body: bytes | dict[str, Any],
) -> None:
    try:
        event = parse_event_body(body)
    except InputError as error:
        assert error.errors and set(error.errors) <= KNOWN_FIELDS, error.errors
        assert all(messages and all(messages) for messages in error.errors.values())
        SEEN["rejected"] += 1
        return
    SEEN["accepted"] += 1
    check_event_invariants(event)


@settings(max_examples=500, deadline=None)
@given(
    obj=event_objects(),
    ts=st.one_of(
        st.floats(), st.integers(), TEXT,
        st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01T10:00:00", "1999-12-31T23:59:59Z",
                         "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"]),
    ),
    ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4", "300.1.1.1", "", None, 7]),
    ua=st.one_of(st.none(), TEXT),
)  # fmt: skip
def test_import_line_timestamps_are_bounded(obj: dict[str, Any], ts: Any, ip: Any, ua: Any) -> None:
    now = time.time()
    line = {**obj, "timestamp": ts, "ip": ip, "user_agent": ua}
    try:
        event, when, address, agent = parse_import_line(line, now=now)
    except InputError as error:
        assert error.errors and set(error.errors) <= KNOWN_FIELDS, error.errors
        return
    check_event_invariants(event)
    assert MIN_IMPORT_EPOCH <= when <= now + MAX_IMPORT_FUTURE_SECONDS
    assert address and agent.strip()


def test_report_counts() -> None:
    print(f"event parser fuzz: {SEEN}")
