"""The events table's ``elements_chain``: autocapture's clicked element and its ancestors as one string.

posthog-js sends them either ready-made (``properties.$elements_chain``, newer versions) or as a list of
element objects (``properties.$elements``, e.g. 1.78). PostHog's ingestion keeps a sent chain as it is,
otherwise serialises the list, and in both cases drops the two properties from the stored event: the
column holds them (plugin-server ``getElementsChain`` in ``worker/ingestion/create-event.ts`` and
``extractElements`` / ``elementsToString`` in ``utils/db/elements-chain.ts``). This module does the same.

One element becomes ``tag.class1.class2:key="value"key="value"…`` (classes sorted, ``"`` removed from
them; attributes sorted by key, ``"`` escaped as ``\\"`` in keys and values) and the elements are joined
by ``;`` in the order the client listed them (posthog-js: the clicked element first). The attributes are ``text`` (the
element's ``$el_text``, cut to 400 characters) and ``href`` (``attr__href``, cut to 2048) when
non-empty, ``nth-child`` and ``nth-of-type`` (0 when missing), ``attr_id`` (``attr__id``) when
non-empty, and every ``attr__*`` key of the element itself. Lengths count UTF-16 code units, as
JavaScript does.
"""

from __future__ import annotations

import string
from typing import Any

import ujson

MAX_TEXT = 400
MAX_HREF = 2048

# Node's String.prototype.localeCompare, which orders PostHog's attribute keys, uses ICU's root
# collation: punctuation and symbols first (in this order), then digits, then letters case-blind, with
# lower case before upper case only to break a tie. A key is almost always ASCII; anything else sorts
# after every ASCII character, by code point (an approximation: no ICU library is needed for it).
_ICU_ASCII = (
    "\t\n\v\f\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789"
    + "".join(c for pair in zip(string.ascii_lowercase, string.ascii_uppercase, strict=True) for c in pair)
)
_PRIMARY = {c: i for i, c in enumerate(_ICU_ASCII)}
for _lower, _upper in zip(string.ascii_lowercase, string.ascii_uppercase, strict=True):
    _PRIMARY[_upper] = _PRIMARY[_lower]


def _collation_key(text: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    primary = tuple(_PRIMARY.get(c, len(_ICU_ASCII) + ord(c)) for c in text)
    return primary, tuple(c.isupper() for c in text)


def _utf16_key(text: str) -> bytes:
    """Array.prototype.sort's default order (UTF-16 code units), which PostHog sorts classes by."""
    return text.encode("utf-16-be", "surrogatepass")


def _js_text(value: Any) -> str:
    """JavaScript's ``String(value)`` for a JSON value (``1.0`` is ``1``, a list joins its items)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join("" if v is None else _js_text(v) for v in value)
    if value is None:
        return "null"
    return ujson.dumps(value)


def _js_slice(text: str, units: int) -> str:
    """``text.slice(0, units)``: JavaScript counts UTF-16 code units (a character beyond U+FFFF is two; one
    that would be cut in half is left out rather than kept as a lone surrogate)."""
    if len(text) * 2 <= units:
        return text
    count = 0
    for i, c in enumerate(text):
        count += 2 if ord(c) > 0xFFFF else 1
        if count > units:
            return text[:i]
    return text


def _escape(text: str) -> str:
    return text.replace('"', '\\"')


def _classes(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, list):
        return [_js_text(c) for c in value]
    return _js_text(value).split(" ")


def element_string(element: Any) -> str:
    """One posthog-js element object (``tag_name``, ``$el_text``, ``attr__*``, ``nth_child``, …)."""
    el = element if isinstance(element, dict) else {}  # a scalar item has no fields, as in JavaScript
    out = _js_text(el["tag_name"]) if el.get("tag_name") else ""
    for name in sorted(_classes(el.get("attr__class")), key=_utf16_key):
        out += "." + name.replace('"', "")
    attributes: dict[str, Any] = {}
    text = el.get("$el_text")
    if isinstance(text, str) and text:
        attributes["text"] = _js_slice(text, MAX_TEXT)
    attributes["nth-child"] = 0 if el.get("nth_child") is None else el["nth_child"]
    attributes["nth-of-type"] = 0 if el.get("nth_of_type") is None else el["nth_of_type"]
    href = el.get("attr__href")
    if isinstance(href, str) and href:
        attributes["href"] = _js_slice(href, MAX_HREF)
    if el.get("attr__id"):
        attributes["attr_id"] = el["attr__id"]
    attributes.update((k, v) for k, v in el.items() if isinstance(k, str) and k.startswith("attr__"))
    pairs = sorted(attributes.items(), key=lambda kv: _collation_key(kv[0]))
    return out + ":" + "".join(f'{_escape(k)}="{_escape(_js_text(v))}"' for k, v in pairs)


def elements_to_chain(elements: list[Any]) -> str:
    return ";".join(element_string(el) for el in elements)


def take_elements_chain(properties: dict[str, Any], fallback: Any = None) -> str:
    """The event's elements chain; removes ``$elements_chain`` and ``$elements`` from ``properties``.

    ``fallback`` is a chain sent beside the properties (the capture API's top-level ``elements_chain``,
    which eventpipe has always stored): used only when the properties carry neither.
    """
    chain = properties.pop("$elements_chain", None)
    elements = properties.pop("$elements", None)
    if chain:
        return _js_text(chain)
    if elements:
        return elements_to_chain(elements) if isinstance(elements, list) else ""
    return _js_text(fallback) if fallback else ""
