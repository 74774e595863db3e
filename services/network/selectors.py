"""Kubernetes label selectors (pure logic).

Syntax: requirements separated by commas, each one of `key=value`,
`key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
(exists) or `!key` (does not exist).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pinet.objects.labels import Requirement, Selector
from pinet.runtime.errors import ApiError, invalid
from services.network import validation

_SET = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)\s*$")
_EQ = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse(text: str, path: str = "labelSelector") -> Selector:
    if not text.strip():
        return Selector()
    reqs: list[Requirement] = []
    for part in _split(text):
        try:
            if m := _SET.match(part):
                values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
                if not values:
                    raise invalid(f"{path}: {part.strip()!r} needs at least one value")
                for v in values:
                    validation.label_value(v, path)
                validation.label_key(m["key"], path)
                reqs.append(Requirement(m["key"], m["op"], values))
            elif m := _EQ.match(part):
                validation.label_key(m["key"], path)
                validation.label_value(m["value"], path)
                reqs.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["value"]])))
            elif m := _EXISTS.match(part):
                validation.label_key(m["key"], path)
                reqs.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
            else:
                raise invalid(f"{path}: cannot parse {part.strip()!r}")
        except ApiError as exc:
            if exc.message.startswith(path):
                raise
            raise invalid(f"{path}: {exc.message}") from None
    return Selector(tuple(reqs))


def from_map(selector: Mapping[str, str]) -> Selector:
    """A service's or deployment's selector: every pair must match."""
    return Selector(tuple(Requirement(k, "=", frozenset([v])) for k, v in sorted(selector.items())))


def map_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A service selector matches labels; an empty one selects nothing (as
    Kubernetes: a service without selector has manually managed endpoints)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
