"""TF Serving's layout on disk, the version policy and the labels."""

from __future__ import annotations

import pytest

from service.version_policy import LayoutError
from service.versions.layout import files_stamp, find_versions


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


def test_the_stamp_changes_when_a_file_is_rewritten(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    before = files_stamp(str(tmp_path))
    (tmp_path / "variables" / "data").write_bytes(b"weights")
    assert files_stamp(str(tmp_path)) != before
