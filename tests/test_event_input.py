"""Validation of `/api/event` bodies and `/api/import` lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.event_input import ParsedEvent, parse_event_body, parse_import_line

BASE: dict[str, Any] = {"name": "pageview", "url": "https://www.example.com/blog/post?x=1"}


def parse(**fields: Any) -> ParsedEvent:
    return parse_event_body({**BASE, **fields})


def errors_of(body: Any) -> dict[str, list[str]]:
    with pytest.raises(InputError) as info:
        parse_event_body(body)
    assert info.value.status == 400
    return info.value.errors


# --- body -----------------------------------------------------------------------------------


def test_minimal_pageview() -> None:
    event = parse()
    assert event.name == "pageview"
    assert event.url == "https://www.example.com/blog/post?x=1"
    assert event.hostname == "example.com"
    assert event.domains == ("example.com",)
    assert event.page == "/blog/post"
    assert event.referrer == ""
    assert event.props == {}
    assert event.interactive is True
    assert event.revenue is None
    assert event.vitals is None
    assert event.utm_source == ""


def test_bytes_and_str_bodies_are_json() -> None:
    text = json.dumps({"n": "pageview", "u": "http://a.test/", "d": "a.test"})
    assert parse_event_body(text) == parse_event_body(text.encode())
    assert parse_event_body(text).domains == ("a.test",)


def test_short_names() -> None:
    event = parse_event_body(
        {
            "n": "Signup",
            "u": "https://shop.test/x",
            "d": "shop.test",
            "r": "https://google.com/",
            "p": {"plan": "pro"},
            "i": False,
            "$": {"currency": "EUR", "amount": 29},
        }
    )
    assert (event.name, event.domains, event.referrer) == (
        "Signup",
        ("shop.test",),
        "https://google.com/",
    )
    assert event.props == {"plan": "pro"}
    assert event.interactive is False
    assert event.revenue == {"currency": "EUR", "amount": "29"}


def test_long_name_wins_over_short() -> None:
    assert parse_event_body({**BASE, "n": "other"}).name == "pageview"


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", "not json", b""])
def test_invalid_json(body: bytes | str) -> None:
    assert list(errors_of(body)) == ["body"]


@pytest.mark.parametrize("body", [b"[]", b"1", b'"x"', b"null", [1, 2]])
def test_body_must_be_object(body: Any) -> None:
    assert errors_of(body) == {"body": ["must be a JSON object"]}


def test_all_errors_collected() -> None:
    errors = errors_of({"u": "ftp://x.test/", "p": [1], "i": "yes", "vitals": {"lcp": -1}})
    assert set(errors) == {"name", "url", "props", "interactive"}  # a bad vital is no error


# --- name / url / domain --------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   ", 5, ["pageview"], "x" * 121])
def test_bad_name(name: Any) -> None:
    body = {**BASE, "name": name}
    if name is None:
        del body["name"]
    assert "name" in errors_of(body)


def test_name_of_120_chars_is_fine() -> None:
    assert parse(name="é" * 120).name == "é" * 120


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "example.com/page",
        "ftp://example.com/",
        "javascript:alert(1)",
        "http:///path",
        "http://[::1",
        42,
        "https://example.com/" + "a" * 2000,
        "https://example.com/" + "é" * 991,  # under 2,000 chars, over 2,000 bytes
    ],
)
def test_bad_url(url: Any) -> None:
    assert "url" in errors_of({**BASE, "url": url})


def test_url_details() -> None:
    event = parse(url="HTTPS://WWW.Example.COM:8443/caf%C3%A9/a%20b#frag")
    assert event.hostname == "example.com"
    assert event.page == "/café/a b"
    assert parse(url="http://example.com").page == "/"
    assert parse(url="http://example.com?utm_source=x").page == "/"
    assert parse(url="https://sub.www.example.com/").hostname == "sub.www.example.com"
    assert parse(url="  https://example.com/  ").url == "https://example.com/"


def test_utm_parameters() -> None:
    event = parse(
        url="https://example.com/?utm_source=Newsletter&utm_medium=email&utm_campaign=launch+day"
        "&utm_content=top%20link&utm_term=shoes"
    )
    assert event.utm_source == "Newsletter"
    assert event.utm_medium == "email"
    assert event.utm_campaign == "launch day"
    assert event.utm_content == "top link"
    assert event.utm_term == "shoes"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("source=a&ref=b", "a"),
        ("ref=b", "b"),
        ("utm_source=&source=a", "a"),
        ("utm_source=u&source=a&ref=b", "u"),
        ("", ""),
    ],
)
def test_utm_source_fallbacks(query: str, expected: str) -> None:
    assert parse(url=f"https://example.com/?{query}").utm_source == expected


def test_domains() -> None:
    assert parse(domain=" A.test, b.test,,a.test ").domains == ("a.test", "b.test")
    assert parse(domain="www.example.com").domains == ("www.example.com",)
    assert parse(domain=" , ").domains == ("example.com",)
    assert "domain" in errors_of({**BASE, "domain": ["a.test"]})


# --- referrer / interactive -----------------------------------------------------------------


def test_referrer_cut() -> None:
    assert (
        parse(referrer="https://r.test/" + "x" * 3000).referrer
        == ("https://r.test/" + "x" * 3000)[:2000]
    )
    assert parse(referrer=None).referrer == ""
    assert "referrer" in errors_of({**BASE, "referrer": 5})


@pytest.mark.parametrize("value", ["true", 1, 0, "false"])
def test_interactive_must_be_boolean(value: Any) -> None:
    assert "interactive" in errors_of({**BASE, "interactive": value})


def test_interactive_null_is_default() -> None:
    assert parse(interactive=None).interactive is True


# --- props ----------------------------------------------------------------------------------


def test_props_stringified() -> None:
    event = parse(props={"a": "x", "b": 2, "c": 1.5, "d": True, "e": False, "f": None, "g": ""})
    assert event.props == {"a": "x", "b": "2", "c": "1.5", "d": "true", "e": "false"}


def test_props_as_json_string() -> None:
    assert parse(props='{"plan": "pro", "n": 3}').props == {"plan": "pro", "n": "3"}
    assert parse(props="").props == {}
    assert "props" in errors_of({**BASE, "props": "[1]"})
    assert "props" in errors_of({**BASE, "props": "{nope"})


def test_props_first_30_kept() -> None:
    props = {f"k{i:02}": i for i in range(40)}
    kept = parse(props=props).props
    assert list(kept) == [f"k{i:02}" for i in range(30)]


@pytest.mark.parametrize(
    "props",
    [
        [1, 2],
        5,
        {"a": {"nested": 1}},
        {"a": [1]},
        {"k" * 301: "v"},
        {"k": "v" * 2001},
        {"k": "é" * 1001},  # 2,002 bytes
    ],
)
def test_bad_props(props: Any) -> None:
    assert list(errors_of({**BASE, "props": props})) == ["props"]


def test_props_size_limits_inclusive() -> None:
    assert parse(props={"k" * 300: "v" * 2000}).props == {"k" * 300: "v" * 2000}


# --- revenue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revenue", "expected"),
    [
        ({"currency": "EUR", "amount": 29}, {"currency": "EUR", "amount": "29"}),
        ({"currency": "usd", "amount": 29.99}, {"currency": "USD", "amount": "29.99"}),
        ({"currency": "JPY", "amount": "1500"}, {"currency": "JPY", "amount": "1500"}),
        ('{"currency": "GBP", "amount": "10.50"}', {"currency": "GBP", "amount": "10.50"}),
        ({"currency": "EURO", "amount": 1}, None),
        ({"currency": "XYZ", "amount": 1}, None),
        ({"currency": "EUR", "amount": "lots"}, None),
        ({"currency": "EUR", "amount": True}, None),
        ({"currency": "EUR", "amount": "NaN"}, None),
        ({"currency": "EUR", "amount": 1e20}, None),
        ({"currency": "EUR"}, None),
        ({"amount": 5}, None),
        ("garbage", None),
        (12, None),
    ],
)
def test_revenue(revenue: Any, expected: dict[str, str] | None) -> None:
    event = parse(revenue=revenue)  # never an error: the event is kept either way
    assert event.revenue == expected


# --- vitals ---------------------------------------------------------------------------------


def test_vitals() -> None:
    vitals = {"ttfb": 120, "fcp": 800.5, "lcp": 1900, "inp": 80, "cls": 0.05}
    assert parse(vitals=vitals).vitals == {k: float(v) for k, v in vitals.items()}
    assert parse(vitals=vitals).dropped_vitals == ()
    assert parse(vitals={"lcp": 1000, "cls": None}).vitals == {"lcp": 1000.0}
    assert parse(vitals={}).vitals is None
    assert parse(vitals=None).vitals is None
    assert parse(vitals=json.dumps({"lcp": 5})).vitals == {"lcp": 5.0}


def test_vitals_at_the_limits_are_kept() -> None:
    edge = {"ttfb": 3_600_000, "fcp": 0, "lcp": 3_600_000.0, "inp": 0.0, "cls": 100}
    event = parse(vitals=edge)
    assert event.vitals == {k: float(v) for k, v in edge.items()}
    assert event.dropped_vitals == ()


@pytest.mark.parametrize(
    ("vitals", "kept", "dropped"),
    [
        ({"lcp": -1, "fcp": 900}, {"fcp": 900.0}, (("lcp", "negative"),)),
        ({"lcp": "fast"}, None, (("lcp", "not_a_number"),)),
        ({"lcp": True}, None, (("lcp", "not_a_number"),)),
        ({"lcp": [1]}, None, (("lcp", "not_a_number"),)),
        ({"lcp": float("inf")}, None, (("lcp", "not_a_number"),)),
        ({"inp": float("nan")}, None, (("inp", "not_a_number"),)),
        ({"ttfb": 3_600_000.5}, None, (("ttfb", "too_large"),)),
        ({"inp": 10**400}, None, (("inp", "too_large"),)),
        ({"cls": 100.01, "lcp": 2000}, {"lcp": 2000.0}, (("cls", "too_large"),)),
        ({"fid": 10, "cls": 0.1}, {"cls": 0.1}, (("unknown", "unknown_key"),)),
        ([1], None, (("vitals", "not_object"),)),
        ("x", None, (("vitals", "not_object"),)),
        (
            {"ttfb": -5, "fcp": 1e12, "lcp": "x", "inp": 40, "cls": 7},
            {"inp": 40.0, "cls": 7.0},
            (("ttfb", "negative"), ("fcp", "too_large"), ("lcp", "not_a_number")),
        ),
    ],
)
def test_bad_vitals_are_dropped_and_the_event_kept(
    vitals: Any, kept: dict[str, float] | None, dropped: tuple[tuple[str, str], ...]
) -> None:
    event = parse(vitals=vitals)  # never a 400
    assert event.name == "pageview" and event.page == "/blog/post"
    assert event.vitals == kept
    assert event.dropped_vitals == dropped


# --- import lines ---------------------------------------------------------------------------

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


def line(**fields: Any) -> dict[str, Any]:
    return {
        **BASE,
        "timestamp": "2026-11-20T10:00:00Z",
        "ip": "81.2.69.160",
        "user_agent": UA,
        **fields,
    }


def import_errors(obj: Any) -> dict[str, list[str]]:
    with pytest.raises(InputError) as info:
        parse_import_line(obj)
    return info.value.errors


def test_import_line() -> None:
    event, ts, ip, ua = parse_import_line(line())
    assert event.page == "/blog/post"
    assert ts == datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp()
    assert (ip, ua) == ("81.2.69.160", UA)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T12:00:00+02:00", 1795168800.0),
        ("2026-11-20T10:00:00.5Z", 1795168800.5),
        (1795168800, 1795168800.0),
        (1795168800.25, 1795168800.25),
    ],
)
def test_import_timestamps(value: Any, expected: float) -> None:
    assert parse_import_line(line(timestamp=value))[1] == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "2026-11-20T10:00:00",
        "2026-11-20",
        "yesterday",
        True,
        -5,
        1795168800000,
        [1],
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_bad_import_timestamps(value: Any) -> None:
    obj = line(timestamp=value)
    if value is None:
        del obj["timestamp"]
    assert list(import_errors(obj)) == ["timestamp"]


def test_import_ip_is_canonical() -> None:
    assert parse_import_line(line(ip=" 2001:DB8:0:0::1 "))[2] == "2001:db8::1"


@pytest.mark.parametrize("ip", [None, "", "999.1.1.1", "example.com", 3232235777])
def test_bad_import_ip(ip: Any) -> None:
    assert list(import_errors(line(ip=ip))) == ["ip"]


@pytest.mark.parametrize("ua", [None, "", "  ", 7])
def test_bad_import_user_agent(ua: Any) -> None:
    assert list(import_errors(line(user_agent=ua))) == ["user_agent"]


def test_import_collects_event_and_line_errors() -> None:
    errors = import_errors({"url": "nope", "ip": "x"})
    assert set(errors) == {"name", "url", "timestamp", "ip", "user_agent"}
    assert import_errors([]) == {"body": ["must be a JSON object"]}


# --- properties -----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "name",
        "n",
        "url",
        "u",
        "domain",
        "d",
        "referrer",
        "r",
        "props",
        "p",
        "interactive",
        "i",
        "revenue",
        "$",
        "vitals",
        "timestamp",
        "ip",
        "user_agent",
    ]
)
bodies = st.dictionaries(field_names | st.text(max_size=5), json_values, max_size=10)
urls = st.builds(
    lambda scheme, host, path, query: f"{scheme}://{host}/{path}?{query}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.from_regex(r"(www\.)?[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True),
    st.text(max_size=40),
    st.text(max_size=40),
)


@settings(max_examples=300)
@given(bodies)
def test_arbitrary_dicts_only_raise_input_error(body: dict[str, Any]) -> None:
    try:
        parse_event_body(body)
    except InputError as e:
        assert e.errors and all(e.errors.values())
    try:
        parse_import_line(body)
    except InputError as e:
        assert e.errors


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_only_raise_input_error(body: bytes | str) -> None:
    try:
        parse_event_body(body)
    except InputError as e:
        assert e.errors


@settings(max_examples=300)
@given(urls, st.none() | st.text(max_size=40))
def test_valid_urls_parse_with_page_starting_with_slash(url: str, domain: str | None) -> None:
    try:
        event = parse_event_body({"n": "pageview", "u": url, "d": domain})
    except InputError as e:
        # Only surrogates in generated text (not encodable) may fail.
        assert set(e.errors) <= {"url", "domain"}
        return
    assert event.page.startswith("/")
    assert event.hostname and not event.hostname.startswith("www.")
    assert event.domains and all(d == d.strip().lower() and d for d in event.domains)


# --- the URL parse cache --------------------------------------------------------------------


@given(
    st.sampled_from(["https://a.test/p?utm_source=x", "http://www.a.test./", "ftp://a.test/"])
    | st.builds(lambda rest: "https://" + rest, st.text(max_size=40))
    | st.text(max_size=40),
    st.sampled_from([None, "a.test", "A.test, b.test,a.test"]),
)
def test_cached_url_parse_gives_the_same_answer(url: str, domain: str | None) -> None:
    from engine.event_input import _domains, _parse_url

    body = {"n": "pageview", "u": url, "d": domain}

    def outcome() -> Any:
        try:
            return parse_event_body(body)
        except InputError as error:
            return error.errors

    first = outcome()
    _parse_url.cache_clear()
    _domains.cache_clear()
    assert outcome() == first  # parsed afresh
    assert outcome() == first  # from the cache


def test_over_long_url_messages() -> None:
    for url, message in [
        ("https://a.test/" + "x" * 2000, "must be at most 2000 bytes"),
        ("https://a.test/" + "\ud800" * 2000, "must be a string"),
        ("https://a.test/" + "é" * 1000, "must be at most 2000 bytes"),  # 2,000 chars, more bytes
        ("https://a.test/\ud800", "must be a string"),
    ]:
        with pytest.raises(InputError) as error:
            parse_event_body({"n": "pageview", "u": url})
        assert error.value.errors == {"url": [message]}
