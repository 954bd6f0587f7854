"""Kubernetes label selectors, compiled once and matched many times.

A policy's ``podSelector`` is a full label selector: every ``matchLabels`` pair and every
``matchExpressions`` requirement must hold (In, NotIn, Exists, DoesNotExist), and an empty
selector selects everything, as in Kubernetes. The builder matches thousands of endpoints
against hundreds of policies, so a selector is compiled into tuples once, and `index_terms`
names the ``(key, value)`` pairs a matching endpoint must carry, which lets the builder look
candidates up instead of trying every policy. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from schemas import resources


class Requirement(msgspec.Struct, frozen=True):
    key: str
    operator: str
    values: frozenset[str] = frozenset()


class Selector(msgspec.Struct, frozen=True):
    """A compiled selector: all requirements must hold; none means "everything"."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def terms(self) -> int:
        """How specific the selector is: its number of requirements."""
        return len(self.requirements)


class InvalidSelector(ValueError):
    """A requirement Kubernetes would refuse (In/NotIn without values, Exists with some)."""


def compile_selector(selector: resources.LabelSelector) -> Selector:
    """matchLabels pairs become ``In`` requirements of one value; order is normalized."""
    requirements = [
        Requirement(key, "In", frozenset((value,)))
        for key, value in selector.match_labels.items()
    ]
    for expression in selector.match_expressions:
        values = frozenset(expression.values)
        if expression.operator in ("In", "NotIn") and not values:
            raise InvalidSelector(
                f"matchExpressions: {expression.operator} on {expression.key!r} needs values"
            )
        if expression.operator in ("Exists", "DoesNotExist") and values:
            raise InvalidSelector(
                f"matchExpressions: {expression.operator} on {expression.key!r} takes no values"
            )
        requirements.append(Requirement(expression.key, expression.operator, values))
    requirements.sort(key=lambda r: (r.key, r.operator, sorted(r.values)))
    return Selector(tuple(requirements))


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    for requirement in selector.requirements:
        value = labels.get(requirement.key)
        operator = requirement.operator
        if operator == "In":
            if value is None or value not in requirement.values:
                return False
        elif operator == "NotIn":
            # Kubernetes: NotIn also selects objects that lack the key.
            if value is not None and value in requirement.values:
                return False
        elif operator == "Exists":
            if value is None:
                return False
        elif operator == "DoesNotExist":
            if value is not None:
                return False
        else:  # pragma: no cover - the schema only admits the four operators
            return False
    return True


def index_terms(selector: Selector) -> list[tuple[str, str]] | None:
    """``(key, value)`` pairs of which every matching label set holds exactly one, or None
    when the selector has no ``In`` requirement (it must then be tried on every endpoint).

    The ``In`` requirement with the fewest values is used; labels hold one value per key,
    so an endpoint finds the selector under at most one of the pairs."""
    best: Requirement | None = None
    for requirement in selector.requirements:
        if requirement.operator == "In" and (
            best is None or len(requirement.values) < len(best.values)
        ):
            best = requirement
    if best is None:
        return None
    return [(best.key, value) for value in sorted(best.values)]
