"""Label selectors (services/network/selectors.py): the `pi get -l` syntax
parsed, matched against label sets, and refused naming what is wrong."""

from __future__ import annotations

import pytest

from pinet.runtime.errors import ApiError
from services.network import selectors

WEB = {"app": "web", "tier": "front", "env": "prod"}
DB = {"app": "db", "env": "prod"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "web", "db", "bare"),
    [
        ("", True, True, True),
        ("app=web", True, False, False),
        ("app==web", True, False, False),
        ("app!=web", False, True, True),
        ("app in (web, db)", True, True, False),
        ("app notin (web)", False, True, True),
        ("tier", True, False, False),
        ("!tier", False, True, True),
        ("env=prod,tier", True, False, False),
        ("env=prod, app in (db,cache)", False, True, False),
        (" app = web ", True, False, False),
        ("example.com/role=x", False, False, False),
    ],
)
def test_parse_and_match(text: str, web: bool, db: bool, bare: bool) -> None:
    selector = selectors.parse(text)
    assert (selector.matches(WEB), selector.matches(DB), selector.matches(BARE)) == (web, db, bare)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("app in ()", "needs at least one value"),
        ("app=we b", "cannot parse"),
        ("-app=web", "labelSelector"),
        ("app=" + "x" * 64, "labelSelector"),
        ("app in (a,b", "cannot parse"),
        ("=web", "cannot parse"),
    ],
)
def test_malformed_selector_is_refused(text: str, says: str) -> None:
    with pytest.raises(ApiError) as err:
        selectors.parse(text)
    assert says in err.value.message and err.value.message.startswith("labelSelector")


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"app": "web"}, WEB, True),
        ({"app": "web", "env": "prod"}, WEB, True),
        ({"app": "web", "env": "dev"}, WEB, False),
        ({"app": "web"}, BARE, False),
        # A Service without a selector has its endpoints managed by hand.
        ({}, WEB, False),
    ],
)
def test_service_selector(selector: dict[str, str], labels: dict[str, str], matches: bool) -> None:
    assert selectors.map_matches(selector, labels) is matches
    assert selectors.from_map(selector).matches(labels) is (matches or not selector)
