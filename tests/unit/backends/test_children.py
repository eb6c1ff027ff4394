"""A module run in a child: judged by its exit status, or by its last line when another reaper took the status."""

from __future__ import annotations

from service.backends.children import finished
from service.threads import ProcessResult


def test_a_child_whose_exit_status_was_taken_elsewhere_is_judged_by_its_last_line():
    assert finished(ProcessResult(0, "", ""), "{")
    assert not finished(ProcessResult(1, '{"runtime_bytes": 1}\n', ""), "{")
    assert finished(ProcessResult(None, 'loading\n{"runtime_bytes": 1}\n', ""), "{")
    assert not finished(ProcessResult(None, "loading\n", "Traceback ..."), "{")
    assert not finished(ProcessResult(None, "", ""), "{")
