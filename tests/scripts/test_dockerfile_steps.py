"""scripts/dockerfile_steps.py: the Dockerfile's steps replayed in a scratch directory."""

from __future__ import annotations

import sys
import textwrap

import pytest

from scripts.dockerfile_steps import ImageState, StepFailed, is_ignored, parse_assignments, run_steps


def test_env_assignments_in_both_forms():
    assert parse_assignments('A=1 B="two words" C=/tmp/x') == {"A": "1", "B": "two words", "C": "/tmp/x"}
    assert parse_assignments("LEGACY some value") == {"LEGACY": "some value"}


def test_dockerignore_patterns():
    patterns = [".git", "**/__pycache__", "docs", "models/*.npz"]
    assert is_ignored(".git/config", patterns)
    assert is_ignored("service/__pycache__/app.pyc", patterns)
    assert is_ignored("docs/plot.png", patterns)
    assert is_ignored("models/holdout.npz", patterns)
    assert not is_ignored("service/app.py", patterns)
    assert not is_ignored("models/digits.keras", patterns)


@pytest.fixture
def context(tmp_path):
    """A build context with a file, a directory, an ignored file and a Dockerfile using them."""
    context = tmp_path / "context"
    (context / "pkg" / "__pycache__").mkdir(parents=True)
    (context / "pkg" / "mod.py").write_text("VALUE = 42\n")
    (context / "pkg" / "__pycache__" / "mod.pyc").write_text("stale")
    (context / "requirements.txt").write_text("\n")
    (context / ".dockerignore").write_text("**/__pycache__\n")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (context / "Dockerfile").write_text(
        textwrap.dedent(f"""\
            # a comment, as in the real one
            FROM python:{python}-slim
            ARG NAME=demo
            ENV GREETING="hello ${{NAME}}" \\
                STATE_DIR=/var/state
            WORKDIR /app
            COPY requirements.txt ./
            COPY pkg/ pkg/
            RUN python -c "import pkg.mod, os, sys; sys.exit(pkg.mod.VALUE != 42)" && echo "$GREETING" > greeting.txt
            RUN test -d "$VIRTUAL_ENV" && mkdir -p "$STATE_DIR"
            USER 10001
            CMD ["python", "-m", "http.server"]
            """)
    )
    return context


def test_steps_run_in_a_scratch_image_root(context, tmp_path):
    root = tmp_path / "root"
    state = ImageState(root)
    command = run_steps(context / "Dockerfile", state)
    assert command == ["python", "-m", "http.server"]
    assert (root / "app" / "greeting.txt").read_text() == "hello demo\n"
    assert (root / "app" / "pkg" / "mod.py").exists()
    assert not (root / "app" / "pkg" / "__pycache__").exists()
    assert state.env["STATE_DIR"] == str(root / "var" / "state") and (root / "var" / "state").is_dir()


def test_a_failing_step_stops_the_replay(context, tmp_path):
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("VALUE != 42", "VALUE != 41"))
    with pytest.raises(StepFailed, match="RUN"):
        run_steps(dockerfile, ImageState(tmp_path / "root"))
