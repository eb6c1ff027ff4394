"""TF Serving's layout on disk, the version policy and the labels."""

from __future__ import annotations

import pytest

from service.versions.layout import LayoutError, VersionPolicy, files_stamp, find_versions, parse_labels


def test_numeric_directories_are_versions_and_a_lone_model_file_is_what_loads(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"graph")  # a SavedModel: the directory loads
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "2" / "README.md").write_text("notes")
    (tmp_path / "10").mkdir()
    for ignored in ("0", "tmp", "3.partial"):
        (tmp_path / ignored).mkdir()
    (tmp_path / "4").write_text("a file, not a directory")
    assert find_versions(str(tmp_path)) == {
        1: str(tmp_path / "1"),
        2: str(tmp_path / "2" / "model.onnx"),
        10: str(tmp_path / "10"),
    }


def test_a_missing_base_path_says_so(tmp_path):
    with pytest.raises(LayoutError, match="cannot be read"):
        find_versions(str(tmp_path / "nowhere"))


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


def test_the_stamp_changes_when_a_file_is_rewritten(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    before = files_stamp(str(tmp_path))
    (tmp_path / "variables" / "data").write_bytes(b"weights")
    assert files_stamp(str(tmp_path)) != before
