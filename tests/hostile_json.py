"""Generators of hostile JSON for the property tests (HTTP routes, queue parser, schemathesis).

Everything here is wire text (bytes), because the hostile part is often what a Python value cannot say
directly: ``1e999`` (parses to infinity), ``NaN``, escaped lone surrogates (``"\\ud800"``), a number of
5000 digits, nesting thousands deep, invalid UTF-8. ``splice`` puts such a fragment anywhere in an
otherwise well-formed document.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

SENTINEL = "\x00hostile\x00"


def nested(levels: int, *, objects: bool = False, core: bytes = b"1") -> bytes:
    """``levels`` arrays (or objects) around ``core``."""
    if objects:
        return b'{"k":' * levels + core + b"}" * levels
    return b"[" * levels + core + b"]" * levels


HOSTILE_FRAGMENTS: tuple[bytes, ...] = (
    nested(65), nested(65, objects=True), nested(300), nested(3000), nested(5000, objects=True),
    b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b"1e-400",
    b'"\\ud800"', b'"tail \\udfff"', b'{"\\ud83d": 1}', b'["\\udbff\\udbff"]',
    b"9" * 5000, b"18446744073709551616", b"-9223372036854775809",
    b'"' + b"x" * 200_000 + b'"', b'"' + b"y" * 1_100_000 + b'"',
    b"true", b"null", b"[]", b"{}", b'"text"', b"-0.0", b'"\\u0000"', b'{"a": 1, "a": [2]}',
)


def splice(template: Any, path: list[Any], fragment: bytes) -> bytes:
    """``template`` as JSON with the value at ``path`` (keys/indexes) replaced by the raw ``fragment``."""
    document = json.loads(json.dumps(template))
    cursor = document
    for key in path[:-1]:
        cursor = cursor[key]
    cursor[path[-1]] = SENTINEL
    text = json.dumps(document).encode()
    return text.replace(json.dumps(SENTINEL).encode(), fragment, 1)


# Scalars a hostile client sends: any float (NaN and infinities included), any int, any text (lone
# surrogates included: json.dumps escapes them as \udXXX, which parses back to a lone surrogate).
_chars = st.characters(codec=None, categories=("Cs", "Lu", "Ll", "Lo", "Nd", "Zs", "Po", "So", "Cc"))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(_chars, max_size=20),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(_chars, max_size=8), inner, max_size=4)),
    max_leaves=12)


@st.composite
def _spliced(draw: st.DrawFn) -> bytes:
    value = draw(st.dictionaries(st.text(max_size=6), _values, min_size=1, max_size=4))
    key = draw(st.sampled_from(sorted(value)))
    return splice(value, [key], draw(st.sampled_from(HOSTILE_FRAGMENTS)))


def hostile_documents() -> st.SearchStrategy[bytes]:
    """Whole request or message bodies: generated JSON with hostile parts, fragments, broken bytes."""
    return st.one_of(
        st.sampled_from(HOSTILE_FRAGMENTS),
        _values.map(lambda v: json.dumps(v).encode()),  # NaN/Infinity tokens, escaped surrogates, big ints
        _spliced(),
        st.integers(60, 400).map(lambda n: nested(n, objects=n % 2 == 0)),
        st.binary(max_size=64),  # not UTF-8, not JSON
        st.sampled_from([b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"a": "\xc3\x28"}', b"{" * 10, b""]),
    )
