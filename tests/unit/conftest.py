"""The fast inner loop (`make unit`: the unit tests not marked slow) must not load TensorFlow.

A test that needs it (a real model, TensorFlow's own messages to compare with) is marked slow and
imports it inside; code under test that does not need TensorFlow must not import it.
"""

from __future__ import annotations

import sys


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.markexpr == "not slow" and "tensorflow" in sys.modules and exitstatus == 0:
        session.exitstatus = 1
        sys.stderr.write(
            "\nTensorFlow was imported by a unit test not marked slow (or by the code it tests): "
            "mark the test slow, or keep the import out of the code that does not need it\n"
        )
