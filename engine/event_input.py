"""Validation of the `POST /api/event` body (and of `/api/import` lines): pure, no I/O.

Every problem is collected under the long name of the field at fault and raised at once as an
`InputError`, so that a client sees all its mistakes in one answer.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from engine.errors import InputError
from engine.hits import VITALS

MAX_NAME_CHARS: Final = 120
MAX_URL_BYTES: Final = 2000
# URLs (and domain lists) whose parse is kept; at most 2,000 bytes each, so at most ~40 MB.
URL_CACHE_SIZE: Final = 16_384
MAX_REFERRER_CHARS: Final = 2000
MAX_PROPS: Final = 30
MAX_PROP_KEY_BYTES: Final = 300
MAX_PROP_VALUE_BYTES: Final = 2000
# Above these a vital is absurd (an hour of milliseconds; CLS is a unitless score): dropped.
MAX_VITAL_MS: Final = 3_600_000.0
MAX_CLS: Final = 100.0
# Label values of a dropped vital whose key is not one of VITALS, or of a non-object `vitals`
# (never the client's own key: it would make the metric's label set unbounded).
UNKNOWN_VITAL: Final = "unknown"
ALL_VITALS: Final = "vitals"
# Beyond Decimal64(3) range downstream; such an amount is a client bug, not a sale.
MAX_REVENUE_AMOUNT: Final = Decimal("1e15")
# 9999-12-31T23:59:59Z: anything later is most likely epoch milliseconds sent as seconds.
MAX_EPOCH_SECONDS: Final = 253_402_300_799.0
# Imports: nothing before web analytics existed in this form, nothing from the future (beyond
# an hour of clock skew); either is a unit or clock bug that would corrupt rollups.
MIN_IMPORT_EPOCH: Final = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_IMPORT_FUTURE_SECONDS: Final = 3600.0

# ISO 4217 codes in use (plus funds, metals and test codes, which are valid codes too).
_CURRENCY_CODES: Final = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD
    EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR
    ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD
    MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR
    PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL
    THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF
    XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG ZWL
"""
CURRENCIES: Final[frozenset[str]] = frozenset(_CURRENCY_CODES.split())

Errors = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    name: str
    url: str
    domains: tuple[str, ...]
    hostname: str
    page: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_content: str
    utm_term: str
    referrer: str
    props: dict[str, str]
    interactive: bool
    revenue: dict[str, str] | None
    vitals: dict[str, float] | None
    # (vital, reason) of each vital dropped as invalid or absurd; the event itself is kept.
    dropped_vitals: tuple[tuple[str, str], ...] = ()


def parse_event_body(body: bytes | str | dict[str, Any]) -> ParsedEvent:
    """The validated event of one `/api/event` body; `InputError` names every field at fault."""
    obj = _load_object(body)
    errors: Errors = {}
    event = _parse_fields(obj, errors)
    if errors or event is None:
        raise InputError(errors or {"body": ["is invalid"]})
    return event


def parse_import_line(
    obj: dict[str, Any], now: float | None = None
) -> tuple[ParsedEvent, float, str, str]:
    """One bulk-import line: (event, epoch seconds, client address, user agent). With `now`,
    a timestamp before 2000 or more than an hour ahead of it is refused."""
    if not isinstance(obj, dict):
        raise InputError({"body": ["must be a JSON object"]})
    errors: Errors = {}
    event = _parse_fields(obj, errors)
    ts = _timestamp(obj.get("timestamp"), errors)
    if ts is not None and now is not None:
        if ts < MIN_IMPORT_EPOCH:
            _add(errors, "timestamp", "is before 2000-01-01")
            ts = None
        elif ts > now + MAX_IMPORT_FUTURE_SECONDS:
            _add(errors, "timestamp", "is in the future")
            ts = None
    ip = _ip(obj.get("ip"), errors)
    user_agent = obj.get("user_agent")
    if not isinstance(user_agent, str) or not user_agent.strip():
        _add(errors, "user_agent", "is required and must be a non-empty string")
    elif not _is_utf8(user_agent):
        _add(errors, "user_agent", "must be valid UTF-8 text")
    if errors or event is None or ts is None or ip is None or not isinstance(user_agent, str):
        raise InputError(errors or {"body": ["is invalid"]})
    return event, ts, ip, user_agent


# --- body-level helpers ---------------------------------------------------------------------


def _load_object(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # orjson says so when the bytes are not UTF-8; tell the client which it was.
            what = "UTF-8" if "utf-8" in str(exc).lower() else "JSON"
            raise InputError({"body": [f"must be valid {what}"]}) from None
    if not isinstance(body, dict):
        raise InputError({"body": ["must be a JSON object"]})
    return body


def _field(obj: dict[str, Any], long: str, short: str) -> Any:
    # The long name wins when a client sends both.
    value = obj.get(long)
    return obj.get(short) if value is None else value


def _add(errors: Errors, field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def _is_utf8(text: str) -> bool:
    # Lone surrogates can reach us from a Python caller; they cannot be encoded downstream.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def _json_object(value: Any) -> Any:
    """Props and revenue may come as a JSON string of an object; decode it if so."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


# --- fields ---------------------------------------------------------------------------------


def _parse_fields(obj: dict[str, Any], errors: Errors) -> ParsedEvent | None:
    name = _name(_field(obj, "name", "n"), errors)
    url = _url(_field(obj, "url", "u"), errors)
    raw_domain = _field(obj, "domain", "d")
    if raw_domain is not None and (not isinstance(raw_domain, str) or not _is_utf8(raw_domain)):
        _add(errors, "domain", "must be a string")
        raw_domain = None
    referrer = _field(obj, "referrer", "r")
    if referrer is None:
        referrer = ""
    elif not isinstance(referrer, str) or not _is_utf8(referrer):
        _add(errors, "referrer", "must be a string")
        referrer = ""
    props = _props(_field(obj, "props", "p"), errors)
    interactive = _field(obj, "interactive", "i")
    if interactive is None:
        interactive = True
    elif not isinstance(interactive, bool):
        _add(errors, "interactive", "must be a boolean")
    revenue = _revenue(_field(obj, "revenue", "$"))
    vitals, dropped_vitals = _vitals(obj.get("vitals"))
    if errors or name is None or url is None or props is None:
        return None

    return ParsedEvent(
        name=name,
        url=url.url,
        domains=_domains(raw_domain, url.hostname),
        hostname=url.hostname,
        page=url.page,
        utm_source=url.utm_source,
        utm_medium=url.utm_medium,
        utm_campaign=url.utm_campaign,
        utm_content=url.utm_content,
        utm_term=url.utm_term,
        referrer=referrer[:MAX_REFERRER_CHARS],
        props=props,
        interactive=bool(interactive),
        revenue=revenue,
        vitals=vitals,
        dropped_vitals=dropped_vitals,
    )


def _name(value: Any, errors: Errors) -> str | None:
    if value is None:
        _add(errors, "name", "is required")
    elif not isinstance(value, str) or not _is_utf8(value):
        _add(errors, "name", "must be a string")
    elif not value.strip():
        _add(errors, "name", "must not be empty")
    elif len(value) > MAX_NAME_CHARS:
        _add(errors, "name", f"must be at most {MAX_NAME_CHARS} characters")
    else:
        return value
    return None


def _url(value: Any, errors: Errors) -> _Url | None:
    if value is None:
        _add(errors, "url", "is required")
        return None
    if not isinstance(value, str):
        _add(errors, "url", "must be a string")
        return None
    if len(value) > MAX_URL_BYTES:  # too long whatever its bytes; not worth a cache entry
        _add(errors, "url", _URL_TOO_LONG if _is_utf8(value) else "must be a string")
        return None
    parsed = _parse_url(value)
    if isinstance(parsed, str):
        _add(errors, "url", parsed)
        return None
    return parsed


class _Url(NamedTuple):
    """What an event keeps of its URL: the same for every hit on a page, so parsed once."""

    url: str
    hostname: str
    page: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_content: str
    utm_term: str


_URL_TOO_LONG: Final = f"must be at most {MAX_URL_BYTES} bytes"


# Pages repeat: a bounded cache keyed by the URL string spares the parse on almost every hit.
@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _parse_url(value: str) -> _Url | str:
    """The URL's parts, or the message saying what is wrong with it."""
    if not _is_utf8(value):
        return "must be a string"
    if len(value.encode()) > MAX_URL_BYTES:
        return _URL_TOO_LONG
    url = value.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if not host or not host.rstrip("."):
        return "must have a host"
    query = parse_qs(parts.query, keep_blank_values=True)

    def param(*keys: str) -> str:
        for key in keys:
            for value in query.get(key, ()):
                if value.strip():
                    return value.strip()
        return ""

    return _Url(
        url=url,
        hostname=_strip_www(host.rstrip(".")),
        page=unquote(parts.path, errors="replace") or "/",
        utm_source=param("utm_source", "source", "ref"),
        utm_medium=param("utm_medium"),
        utm_campaign=param("utm_campaign"),
        utm_content=param("utm_content"),
        utm_term=param("utm_term"),
    )


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _domains(raw: str | None, hostname: str) -> tuple[str, ...]:
    # Each listed site gets its own copy of the event, so a repeated one must not count twice.
    listed = [d.strip().lower() for d in (raw or "").split(",")]
    domains = tuple(dict.fromkeys(d for d in listed if d))
    return domains or (hostname,)


def _prop_value(value: Any) -> str | None:
    # JSON spelling for booleans, so `true` reads the same whichever way the client sent it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value if _is_utf8(value) else None
    return None


def _props(value: Any, errors: Errors) -> dict[str, str] | None:
    if value is None or value == "":
        return {}
    decoded = _json_object(value)
    if not isinstance(decoded, dict):
        _add(errors, "props", "must be an object")
        return None
    props: dict[str, str] = {}
    failed = False
    for key, raw in decoded.items():
        if raw is None or raw == "" or key == "":
            continue  # empty pairs carry nothing
        if len(props) == MAX_PROPS:
            break
        text = _prop_value(raw)
        if not isinstance(key, str) or not _is_utf8(key):
            _add(errors, "props", "keys must be strings")
            failed = True
        elif text is None:
            _add(errors, "props", f"value of {key[:50]!r} must be a string, number or boolean")
            failed = True
        elif len(key.encode()) > MAX_PROP_KEY_BYTES:
            _add(errors, "props", f"key {key[:50]!r}... is over {MAX_PROP_KEY_BYTES} bytes")
            failed = True
        elif len(text.encode()) > MAX_PROP_VALUE_BYTES:
            _add(errors, "props", f"value of {key[:50]!r} is over {MAX_PROP_VALUE_BYTES} bytes")
            failed = True
        else:
            props[key] = text
    return None if failed else props


def _revenue(value: Any) -> dict[str, str] | None:
    """Invalid revenue is dropped, not an error: the event itself is still worth counting."""
    decoded = _json_object(value)
    if not isinstance(decoded, dict):
        return None
    currency, amount = decoded.get("currency"), decoded.get("amount")
    if not isinstance(currency, str) or currency.strip().upper() not in CURRENCIES:
        return None
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        return None
    try:
        # str() first so that 29.99 stays 29.99 rather than its binary expansion.
        number = Decimal(str(amount).strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) >= MAX_REVENUE_AMOUNT:
        return None
    return {"currency": currency.strip().upper(), "amount": str(number)}


def _vitals(value: Any) -> tuple[dict[str, float] | None, tuple[tuple[str, str], ...]]:
    """Valid vitals, and (vital, reason) for each one dropped. Never an error: a bad vital
    says nothing against the pageview it rides on."""
    if value is None:
        return None, ()
    decoded = _json_object(value)
    if not isinstance(decoded, dict):
        return None, ((ALL_VITALS, "not_object"),)
    vitals: dict[str, float] = {}
    dropped: list[tuple[str, str]] = []
    for key, raw in decoded.items():
        if key not in VITALS:
            dropped.append((UNKNOWN_VITAL, "unknown_key"))
        elif raw is None:
            continue  # not measured on this page load
        elif (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            # isfinite only on floats: a huge int would overflow it (it is caught as too large)
            or (isinstance(raw, float) and not math.isfinite(raw))
        ):
            dropped.append((key, "not_a_number"))
        elif raw < 0:
            dropped.append((key, "negative"))
        elif raw > (MAX_CLS if key == "cls" else MAX_VITAL_MS):
            dropped.append((key, "too_large"))
        else:
            vitals[key] = float(raw)
    return vitals or None, tuple(dropped)


def _timestamp(value: Any, errors: Errors) -> float | None:
    if value is None:
        _add(errors, "timestamp", "is required")
        return None
    ts: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
            naive = parsed.utcoffset() is None
            # Year 1 with a positive offset falls before datetime's range once made UTC.
            ts = None if naive else parsed.timestamp()
        except (ValueError, OverflowError):
            naive = False
        if naive:
            _add(errors, "timestamp", "needs a UTC offset (e.g. Z or +02:00)")
            return None
    if ts is None or not math.isfinite(ts):
        _add(errors, "timestamp", "must be ISO 8601 with a UTC offset, or epoch seconds")
        return None
    if not 0 <= ts <= MAX_EPOCH_SECONDS:
        _add(errors, "timestamp", "is out of range (epoch seconds, not milliseconds)")
        return None
    return ts


def _ip(value: Any, errors: Errors) -> str | None:
    if value is None:
        _add(errors, "ip", "is required")
        return None
    if isinstance(value, str):
        try:
            # The canonical spelling, so that one address always hashes to one visitor.
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            pass
    _add(errors, "ip", "must be an IPv4 or IPv6 address")
    return None
