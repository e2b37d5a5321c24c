"""Lossless encoding of text and JSON for PostgreSQL.

PostgreSQL ``text`` cannot hold U+0000 and ``jsonb`` rejects ``\\u0000``. Agent tool output
does contain NUL bytes (binary dumps, C strings), so convostore stores such strings with an
escape of its own instead of refusing or silently dropping them:

* a string that contains U+0000, or that starts with the marker U+E000 (a private-use
  code point), is stored as ``U+E000 + s.replace("%", "%25").replace("\\0", "% 00 ")``;
* every other string is stored as it is.

A NUL's escape is spaced so that full-text search still parses the words around it as
words (``abc%00secret`` would be read as the words ``abc`` and ``00secret``). Every ``%`` of
an escaped string starts an escape, so decoding is unambiguous; rows written before with the
escape ``%00`` still decode.

Decoding reverses it for any string starting with the marker. The rule applies to the
``content`` column and to every key and string value inside JSON columns, so ordinary
rows stay readable with plain SQL and only the rare NUL-bearing string looks escaped.
Both directions take a fast path (one ``in`` test on the serialised text) when no string
needs the escape.

Lone surrogates (``"\\ud800"``) cannot be encoded as UTF-8 at all: they are rejected.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from .errors import InvalidInput, InvalidType

MARKER = "\ue000"
_NUL = "\x00"
_NUL_ESCAPE = "% 00 "  # spaced: search reads the words on either side as words
_JSON_NUL = "\\u0000"


def encode_text(value: str) -> str:
    """Return *value* in its stored form (escaped only if it holds NUL or starts with the marker)."""
    if _NUL in value or value.startswith(MARKER):
        return MARKER + value.replace("%", "%25").replace(_NUL, _NUL_ESCAPE)
    return value


def decode_text(value: str) -> str:
    """Inverse of :func:`encode_text`."""
    if value.startswith(MARKER):
        return value[1:].replace(_NUL_ESCAPE, _NUL).replace("%00", _NUL).replace("%25", "%")
    return value


def utf8_size(value: str, what: str, error: type[InvalidInput] = InvalidInput) -> int:
    """The bytes *value* takes in UTF-8; raises *error* if it holds a lone surrogate (it
    cannot be stored as UTF-8). ASCII text is neither encoded nor checked: no need."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{what} holds a lone surrogate at index {exc.start}; it cannot be stored") from exc


def check_utf8(value: str, what: str, error: type[InvalidInput] = InvalidInput) -> None:
    """Raise *error* if *value* holds a lone surrogate (it cannot be stored as UTF-8)."""
    utf8_size(value, what, error)


def _prepare(value: Any, nonce: str, exact: dict[str, str]) -> Any:
    """Escape NUL-bearing strings; swap large floats for placeholders (see dump_json)."""
    if isinstance(value, str):
        return encode_text(value)
    if isinstance(value, float) and abs(value) >= 1e16 and math.isfinite(value):
        token = f"{nonce}:{len(exact)}"
        exact[token] = f"{int(value)}.0"
        return token
    if isinstance(value, dict):
        return {encode_text(k): _prepare(v, nonce, exact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_prepare(v, nonce, exact) for v in value]
    return value


def _unescape_tree(value: Any) -> Any:
    if isinstance(value, str):
        return decode_text(value)
    if isinstance(value, dict):
        return {decode_text(k): _unescape_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape_tree(v) for v in value]
    return value


def _check_keys(value: Any, what: str, error: type[InvalidInput]) -> None:
    """json.dumps turns int, float, bool and None keys into strings: refuse them instead,
    so that what is read back equals what was written."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise error(f"{what} has a non-string key {key!r}; JSON object keys are strings")
                if isinstance(child, (dict, list, tuple)):
                    stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(child for child in item if isinstance(child, (dict, list, tuple)))


def dump_json(
    value: Any, what: str, error: type[InvalidInput] = InvalidInput, type_error: type[InvalidInput] = InvalidType
) -> str:
    """Serialise *value* for a ``jsonb`` parameter, escaping NUL-bearing strings.

    Raises *error* for values JSON cannot represent: non-string keys, NaN or infinity
    (``jsonb`` rejects them), lone surrogates, nesting too deep to serialise; *type_error*
    (also a ``TypeError``) for objects of a type JSON cannot hold at all.
    """
    return dump_json_sized(value, what, error, type_error)[0]


def dump_json_sized(
    value: Any, what: str, error: type[InvalidInput] = InvalidInput, type_error: type[InvalidInput] = InvalidType
) -> tuple[str, int]:
    """:func:`dump_json`, with the size of the text in UTF-8 bytes."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except TypeError as exc:
        raise type_error(f"{what} is not JSON-serialisable: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not JSON-serialisable: {exc}") from exc
    _check_keys(value, what, error)
    if _JSON_NUL in text or MARKER in text or "e+" in text:
        # Slow path, rare: strings to escape, or floats printed with a positive exponent
        # (|x| >= 1e16). jsonb keeps a decimal point but drops an exponent, so
        # 4.303167560346458e+16 would come back as the int 43031675603464580, which is not
        # the float's value; writing the exact value with ".0" makes it come back exact.
        nonce = secrets.token_hex(8)
        exact: dict[str, str] = {}
        text = json.dumps(_prepare(value, nonce, exact), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        for token, digits in exact.items():
            text = text.replace(f'"{token}"', digits)
    return text, utf8_size(text, what, error)


def load_json(text: str | None) -> Any:
    """Parse a ``jsonb`` value read from PostgreSQL, undoing the NUL escape."""
    if text is None:
        return None
    value = json.loads(text)
    if MARKER in text:
        value = _unescape_tree(value)
    return value
