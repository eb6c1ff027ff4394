"""Run the Dockerfile's steps without Docker, to check them where no Docker engine runs (CI).

    python scripts/dockerfile_steps.py [--dockerfile Dockerfile] [--keep]

The image's filesystem is a scratch directory: `WORKDIR /app` becomes `<scratch>/app`,
absolute paths in `ENV` values move under it the same way, `FROM python:X.Y` becomes a
new virtual environment of this Python (which must be X.Y), `COPY` copies from the build
context (honouring .dockerignore) and `RUN` runs the same shell command with the image's
environment. Then `CMD` starts the service as the container would, and the script waits
for `/readyz`, sends one prediction, scrapes `/metrics` and stops it with SIGTERM, which
must end it cleanly. `USER` and `EXPOSE` are reported, not applied. Exits non-zero at the
first step that fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

from scripts.launcher import PROJECT_ROOT, ServerFailedToStart, free_port, wait_until_ready
from scripts.predict_requests import sample_body

READY_TIMEOUT_S = 300.0
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class StepFailed(RuntimeError):
    """A Dockerfile step failed; the message names it."""


@dataclass
class ImageState:
    """What the image would hold so far: its root, working directory, variables and environment."""

    root: Path
    workdir: str = "/"
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def path(self, image_path: str) -> Path:
        """Where an image path lives in the scratch root (relative paths are from WORKDIR)."""
        absolute = image_path if image_path.startswith("/") else f"{self.workdir.rstrip('/')}/{image_path}"
        return self.root / absolute.lstrip("/")

    def expand(self, text: str) -> str:
        values = {**self.args, **self.env}
        return _VARIABLE.sub(lambda m: values.get(m[1] or m[2], ""), text)

    def process_env(self) -> dict[str, str]:
        venv_bin = self.root / "venv" / "bin"
        return {
            **os.environ,
            **self.env,
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "VIRTUAL_ENV": str(venv_bin.parent),
        }


def parse_assignments(text: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` and the legacy `ENV A 1` -> {"A": "1", ...}."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def ignored_patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
    return False


def copy_into_image(context: Path, sources: list[str], destination: Path, patterns: list[str]) -> None:
    for source in sources:
        origin = context / source
        if not origin.exists():
            raise StepFailed(f"COPY: {source} is not in the build context")
        files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(context).as_posix()
            if is_ignored(relative, patterns):
                continue
            if origin.is_file():
                target = (
                    destination / file.name if str(destination).endswith("/") or destination.is_dir() else destination
                )
            else:
                target = destination / file.relative_to(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def run_steps(dockerfile: Path, state: ImageState) -> list[str]:
    """Apply every instruction up to CMD; returns CMD's argument vector."""
    context = dockerfile.parent
    patterns = ignored_patterns(context)
    command: list[str] = []
    parser = DockerfileParser(path=str(dockerfile))
    steps = [step for step in parser.structure if step["instruction"] != "COMMENT"]
    for number, step in enumerate(steps, 1):
        instruction, value = step["instruction"], step["value"]
        print(f"step {number}: {instruction} {value}", flush=True)
        started = time.monotonic()
        if instruction == "FROM":
            _make_python(value, state)
        elif instruction == "ARG":
            name, _, default = value.partition("=")
            state.args.setdefault(name.strip(), default.strip())
        elif instruction == "ENV":
            for name, raw in parse_assignments(state.expand(value)).items():
                state.env[name] = str(state.path(raw)) if raw.startswith("/") else raw
        elif instruction == "WORKDIR":
            state.workdir = state.expand(value)
            state.path(".").mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, destination = shlex.split(state.expand(value))
            target = state.path(destination)
            if destination.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            copy_into_image(context, sources, target, patterns)
        elif instruction == "RUN":
            done = subprocess.run(["/bin/sh", "-c", value], cwd=state.path("."), env=state.process_env())
            if done.returncode != 0:
                raise StepFailed(f"RUN {value!r} exited with {done.returncode}")
        elif instruction == "CMD":
            command = json.loads(value)
        elif instruction in ("USER", "EXPOSE", "LABEL"):
            print(f"  ({instruction} is not applied outside Docker)")
        else:
            raise StepFailed(f"{instruction} is not supported by this script; extend it or keep the Dockerfile simple")
        print(f"  ok ({time.monotonic() - started:.0f} s)", flush=True)
    if not command:
        raise StepFailed("the Dockerfile has no CMD in exec form")
    return command


def _make_python(image: str, state: ImageState) -> None:
    match = re.match(r"python:(\d+)\.(\d+)", image)
    if match is None:
        raise StepFailed(f"FROM {image}: only python:X.Y images are supported")
    wanted = (int(match[1]), int(match[2]))
    if sys.version_info[:2] != wanted:
        raise StepFailed(f"FROM {image} needs Python {wanted[0]}.{wanted[1]}; this is {sys.version.split()[0]}")
    subprocess.run([sys.executable, "-m", "venv", str(state.root / "venv")], check=True)


def serve_and_check(command: list[str], state: ImageState) -> None:
    """Start CMD as the container would, wait until ready, predict once, scrape, SIGTERM."""
    port = free_port()
    env = {**state.process_env(), "PORT": str(port), "GRPC_PORT": str(free_port())}
    url = f"http://127.0.0.1:{port}"
    print(f"CMD {command} on port {port}", flush=True)
    server = subprocess.Popen(command, cwd=state.path("."), env=env, start_new_session=True)
    try:
        try:
            wait_until_ready(url, server, READY_TIMEOUT_S)
        except ServerFailedToStart as error:
            raise StepFailed(f"CMD: {error}") from None
        model_name = json.load(urllib.request.urlopen(f"{url}/readyz", timeout=10))["model"]
        request = urllib.request.Request(f"{url}/predict", data=sample_body(url, model_name), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            predictions = json.load(answer)["predictions"]
        print(f"  predict answered {len(predictions)} prediction(s)")
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
            scraped = answer.read().decode()
        if "model_server_http_requests_total" not in scraped:
            raise StepFailed("/metrics has no request counter")
        print("  /metrics scraped")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    if code != 0:
        raise StepFailed(f"the server exited with {code} after SIGTERM")
    print("  stopped cleanly on SIGTERM")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dockerfile", type=Path, default=PROJECT_ROOT / "Dockerfile")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dockerfile-steps-"))
    try:
        state = ImageState(root)
        serve_and_check(run_steps(args.dockerfile.resolve(), state), state)
    except StepFailed as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"scratch image root kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("every Dockerfile step ran and the service answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
