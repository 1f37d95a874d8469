"""processors/elements.py: posthog-js ``$elements`` -> the events table's ``elements_chain``, as PostHog's
plugin-server serialises them (the expected strings are those of its elements-chain tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from processors.elements import element_string, elements_to_chain, take_elements_chain
from processors.transform import process_event
from tests.test_unit_transform import raw_event

LINK = {
    "tag_name": "a",
    "$el_text": "bla bla",
    "attr__href": "/a-url",
    "attr__class": "small",
    "nth_child": 1,
    "nth_of_type": 0,
    "attr__data-attr": 'something " that; could mess up',
}


def test_a_posthog_js_element_list_becomes_posthogs_chain() -> None:
    chain = elements_to_chain([
        LINK,
        {"tag_name": "button", "attr__class": "btn btn-primary", "nth_child": 0, "nth_of_type": 0},
        {"tag_name": "div", "nth_child": 0, "nth_of_type": 0, "attr__id": "nested"},
    ])
    assert chain == ";".join([
        'a.small:attr__class="small"attr__data-attr="something \\" that; could mess up"attr__href="/a-url"'
        'href="/a-url"nth-child="1"nth-of-type="0"text="bla bla"',
        'button.btn.btn-primary:attr__class="btn btn-primary"nth-child="0"nth-of-type="0"',
        'div:attr__id="nested"attr_id="nested"nth-child="0"nth-of-type="0"',
    ])


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        pytest.param({"attr__class": "something another"},
                     '.another.something:attr__class="something another"nth-child="0"nth-of-type="0"',
                     id="classes-sorted-no-tag"),
        pytest.param({"attr__class": ["b", 'a"']}, '.a.b:attr__class="b,a\\""nth-child="0"nth-of-type="0"',
                     id="class-list-quotes-dropped"),
        pytest.param({}, ':nth-child="0"nth-of-type="0"', id="empty"),
        pytest.param(7, ':nth-child="0"nth-of-type="0"', id="scalar-item"),
        pytest.param({"tag_name": "p", "$el_text": "", "attr__href": ""}, 'p:attr__href=""nth-child="0"nth-of-type="0"',
                     id="empty-text-and-href-left-out"),
        pytest.param({"nth_child": 2.0, "nth_of_type": None, "attr__x": True},
                     ':attr__x="true"nth-child="2"nth-of-type="0"', id="js-strings"),
        # ICU order (Node's localeCompare): digits before letters, letters case-blind, lower case first on a tie.
        pytest.param({"attr__aB": 1, "attr__ab": 2, "attr__a1": 3},
                     ':attr__a1="3"attr__ab="2"attr__aB="1"nth-child="0"nth-of-type="0"', id="collation"),
    ],
)
def test_one_element(element: Any, expected: str) -> None:
    assert element_string(element) == expected


def test_text_and_href_are_cut_as_javascript_counts() -> None:
    chain = element_string({"$el_text": "x" * 399 + "🚀", "attr__href": "h" * 3000})
    assert 'text="' + "x" * 399 + '"' in chain  # the emoji is two UTF-16 units: it does not fit in 400
    assert 'href="' + "h" * 2048 + '"' in chain


@pytest.mark.parametrize(
    ("properties", "fallback", "expected"),
    [
        pytest.param({"$elements_chain": "div:nth-child=\"1\"", "$elements": [LINK]}, None, 'div:nth-child="1"',
                     id="a-sent-chain-is-kept"),
        pytest.param({"$elements": [{"tag_name": "div"}]}, "ignored", 'div:nth-child="0"nth-of-type="0"',
                     id="elements-built"),
        pytest.param({"$elements_chain": "", "$elements": []}, "span:", "span:", id="top-level-chain-fallback"),
        pytest.param({"$elements": "not a list"}, None, "", id="not-a-list"),
        pytest.param({}, None, "", id="nothing"),
    ],
)
def test_take_elements_chain(properties: dict[str, Any], fallback: Any, expected: str) -> None:
    assert take_elements_chain(properties, fallback) == expected
    assert "$elements" not in properties and "$elements_chain" not in properties


def test_the_stored_event_gets_the_chain_and_not_the_elements() -> None:
    raw = raw_event(data={"event": "$autocapture", "properties": {"$event_type": "click", "$elements": [LINK]}})
    (row,) = process_event(raw, 1).events
    assert row["elements_chain"] == element_string(LINK)
    assert json.loads(row["properties"]) == {"$event_type": "click"}
    assert raw.data["properties"]["$elements"] == [LINK]  # the raw event is left as it was
