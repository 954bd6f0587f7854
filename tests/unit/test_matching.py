"""Label selectors with Kubernetes semantics, and the index the builder looks them up by."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.rules import matching
from schemas import resources


def _selector(raw: dict[str, Any]) -> matching.Selector:
    return matching.compile_selector(msgspec.convert(raw, resources.LabelSelector))


WEB = {"app": "shop", "tier": "web"}

CASES = [
    # (selector, labels, selected)
    ({}, {}, True),
    ({}, WEB, True),
    ({"matchLabels": {"app": "shop"}}, WEB, True),
    ({"matchLabels": {"app": "shop", "tier": "web"}}, WEB, True),
    ({"matchLabels": {"app": "shop", "tier": "db"}}, WEB, False),
    ({"matchLabels": {"app": "shop"}}, {}, False),
    ({"matchLabels": {"other": "x"}}, WEB, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]},
     WEB, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}, WEB, False),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, WEB, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
     WEB, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]},
     WEB, False),
    # NotIn selects objects without the key, as in Kubernetes.
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]},
     WEB, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, WEB, True),
    ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, WEB, False),
    ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, WEB, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, WEB, False),
    # matchLabels and matchExpressions are ANDed.
    ({"matchLabels": {"app": "shop"},
      "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}, WEB, False),
    ({"matchLabels": {"app": "shop"},
      "matchExpressions": [{"key": "tier", "operator": "Exists"},
                           {"key": "canary", "operator": "DoesNotExist"}]}, WEB, True),
    # An empty label value is a value.
    ({"matchLabels": {"app": ""}}, {"app": ""}, True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"app": ""}, True),
]


@pytest.mark.parametrize(("raw", "labels", "selected"), CASES)
def test_selector_table(raw: dict[str, Any], labels: dict[str, str], selected: bool) -> None:
    """Each selector selects exactly the label sets Kubernetes would."""
    assert matching.matches(_selector(raw), labels) is selected


@pytest.mark.parametrize("raw", [
    {"matchExpressions": [{"key": "a", "operator": "In"}]},
    {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
])
def test_requirements_kubernetes_refuses_are_invalid(raw: dict[str, Any]) -> None:
    """In/NotIn without values and Exists/DoesNotExist with values are refused."""
    with pytest.raises(matching.InvalidSelector):
        _selector(raw)


def test_terms_count_every_requirement() -> None:
    """Specificity is the number of matchLabels pairs plus matchExpressions."""
    selector = _selector({"matchLabels": {"a": "1", "b": "2"},
                          "matchExpressions": [{"key": "c", "operator": "Exists"}]})
    assert selector.terms == 3
    assert _selector({}).terms == 0


def test_index_terms_prefer_the_narrowest_in() -> None:
    """The In requirement with fewest values indexes the selector; none: unindexed."""
    selector = _selector({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "db"]},
        {"key": "app", "operator": "In", "values": ["shop"]},
    ]})
    assert matching.index_terms(selector) == [("app", "shop")]
    assert matching.index_terms(_selector({"matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["web"]}]})) is None
    assert matching.index_terms(_selector({})) is None


keys = st.sampled_from(["app", "tier", "zone", "team"])
values = st.sampled_from(["a", "b", "c", ""])
label_sets = st.dictionaries(keys, values, max_size=4)
requirements = st.one_of(
    st.builds(lambda k, vs, op: {"key": k, "operator": op, "values": vs},
              keys, st.lists(values, min_size=1, max_size=3), st.sampled_from(["In", "NotIn"])),
    st.builds(lambda k, op: {"key": k, "operator": op},
              keys, st.sampled_from(["Exists", "DoesNotExist"])),
)
selectors = st.builds(
    lambda ml, me: {"matchLabels": ml, "matchExpressions": me},
    label_sets, st.lists(requirements, max_size=3),
)


@given(selectors, label_sets)
def test_index_never_hides_a_match(raw: dict[str, Any], labels: dict[str, str]) -> None:
    """A selector that matches a label set is found under exactly one of its index terms."""
    selector = _selector(raw)
    terms = matching.index_terms(selector)
    if matching.matches(selector, labels) and terms is not None:
        assert sum(1 for term in terms if term in labels.items()) == 1


@given(selectors, label_sets, label_sets)
def test_more_labels_never_unselect_without_negation(
    raw: dict[str, Any], labels: dict[str, str], extra: dict[str, str]
) -> None:
    """Without NotIn/DoesNotExist, adding labels under new keys keeps a match a match."""
    raw = {**raw, "matchExpressions": [
        r for r in raw["matchExpressions"] if r["operator"] in ("In", "Exists")]}
    selector = _selector(raw)
    if matching.matches(selector, labels):
        assert matching.matches(selector, {**extra, **labels})


@given(label_sets)
def test_matchlabels_of_a_label_set_select_it(labels: dict[str, str]) -> None:
    """A label set is selected by matchLabels equal to itself, and by the empty selector."""
    assert matching.matches(_selector({"matchLabels": labels}), labels)
    assert matching.matches(_selector({}), labels)
