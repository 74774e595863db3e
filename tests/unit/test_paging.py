"""In-memory paging (pinet/runtime/paging.py): every item once, in order,
while items come and go between pages."""

from __future__ import annotations

import pytest

from pinet.runtime.errors import ApiError
from pinet.runtime.paging import page_after, page_size


def test_pages_cover_every_item_once() -> None:
    items = [f"k{i:03d}" for i in range(25)]
    seen, token = [], ""
    while True:
        page, token = page_after(items, str, token, 10)
        seen += page
        if not token:
            break
    assert seen == items


def test_an_item_removed_or_added_behind_the_token_moves_nothing() -> None:
    items = [f"k{i}" for i in range(6)]
    page, token = page_after(items, str, "", 3)
    assert page == ["k0", "k1", "k2"] and token == "k2"
    items.remove("k1")  # behind the token
    items.insert(0, "a")  # sorts before it
    page, token = page_after(items, str, token, 3)
    assert page == ["k3", "k4", "k5"] and token == ""


def test_the_last_full_page_has_no_token() -> None:
    assert page_after(["a", "b"], str, "", 2) == (["a", "b"], "")
    assert page_after([], str, "", 2) == ([], "")


@pytest.mark.parametrize(("requested", "size"), [(0, 100), (7, 7), (5000, 1000)])
def test_page_size_defaults_and_caps(requested: int, size: int) -> None:
    assert page_size(requested, 100, 1000) == size


def test_a_negative_page_size_is_refused_naming_the_field() -> None:
    with pytest.raises(ApiError) as err:
        page_size(-1, 100, 1000, "options.page_size")
    assert err.value.message.startswith("options.page_size")
