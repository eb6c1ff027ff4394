"""Which versions to serve and their labels, read from the settings' text."""

from __future__ import annotations

import pytest

from service.version_policy import LayoutError, VersionPolicy, parse_labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", {7}),
        ("latest:2", {3, 7}),
        ("all", {1, 3, 7}),
        ("specific:1,7,9", {1, 7}),
    ],
)
def test_the_policy_selects_versions_as_tf_serving_does(text, expected):
    assert VersionPolicy.parse(text).select({1, 3, 7}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", [2, 1]),
        ("latest:2", [1]),
        ("all", []),
        ("specific:2", [1]),
        ("specific:1,3", [2]),
        ("specific:7", []),  # the version it names is not there: nothing to fall back from
    ],
)
def test_the_fallbacks_are_the_older_versions_newest_first(text, expected):
    assert VersionPolicy.parse(text).fallbacks({1: "a", 2: "b", 3: "c"}) == expected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "all:2", "specific:", "specific:0", "specific:a"])
def test_a_policy_that_means_nothing_is_refused_with_the_forms_it_may_take(text):
    with pytest.raises(LayoutError, match="latest:N"):
        VersionPolicy.parse(text)


def test_labels_map_names_to_versions_and_a_bad_one_is_named():
    assert parse_labels("stable=1, canary=2") == {"stable": 1, "canary": 2}
    assert parse_labels("") == {}
    for bad in ("stable", "sta-ble=1", "stable=x", "stable=0"):
        with pytest.raises(LayoutError, match="label=version"):
            parse_labels(bad)
