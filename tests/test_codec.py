"""The engine's MessagePack codec writes msgpack-python's bytes and reads them back, so states
and messages written before the codec changed (and session fingerprints) stay valid."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import codec
from engine.hits import decode_hits, encode_hits
from loadtest.synthetic import hits_stream, site_names

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300)
@given(values)
def test_the_bytes_are_msgpack_pythons_and_read_back(value: Any) -> None:
    packed = codec.pack(value)
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert codec.unpack(packed) == value
    assert msgpack.unpackb(packed, raw=False) == value


def test_a_hits_message_written_by_msgpack_python_decodes_the_same() -> None:
    hits = list(hits_stream(300, site_names(5), 1_700_000_000.0, 600))
    legacy = msgpack.packb({"v": 1, "hits": hits}, use_bin_type=True)
    assert encode_hits(hits) == legacy
    assert decode_hits(legacy) == hits


@pytest.mark.parametrize("payload", [b"", b"\x92\x01", b"\xc1", b"\x81\xa1"])
def test_bad_bytes_raise_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        codec.unpack(payload)


def test_hits_of_another_codec_version_are_refused() -> None:
    with pytest.raises(ValueError, match="codec version"):
        decode_hits(codec.pack({"v": 2, "hits": [], "at": time.time()}))
