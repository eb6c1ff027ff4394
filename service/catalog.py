"""The models one server serves, each with its own settings: one model, TF Serving's model config file, or
Triton's model repository.

A model is served with the server's settings, in which its name, its base path (the versions
layout of service/versions/) and its version policy and labels are its own, and so are the
per-model settings of the `settings.env` file in its base path (its batching, its queue; the
format of SETTINGS_FILE). One model (`MODEL_PATH`, `MODEL_BASE_PATH`) is the catalog of one.
Read without TensorFlow: the config file's messages come from the descriptors the server keeps.

`served_models` reads the files once per process, and the master reads them at start: the plan
is made for those models. With MODEL_CONFIG_POLL_S each worker reads them again (`read_models`)
and serves what they say by then (service/hosting/watcher.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from google.protobuf import text_format

from service.settings import Settings, SettingsError, read_model_settings
from service.tfserving_messages import ModelServerConfig

MODEL_SETTINGS_FILE = "settings.env"  # in a model's base path: the per-model settings it sets
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # safe in a URL path and a metric label
BACKENDS = {"": "auto", "tensorflow": "tensorflow", "onnx": "onnx", "onnxruntime": "onnx"}  # model_platform

# (MODEL_CONFIG_FILE, MODEL_REPOSITORY) -> each model's name and the settings it sets itself, as first read
_read: dict[tuple[str, str], list[tuple[str, dict]]] = {}


def served_models(settings: Settings) -> tuple[Settings, ...]:
    """Each served model's settings, in the order configured (the repository's: by name), as first read.

    Raises SettingsError naming the file and the model when the configuration cannot be served:
    it does not parse, a name is missing, unsafe or repeated, a base path is not a directory,
    a `settings.env` sets what it may not.
    """
    if not serves_catalog(settings):
        return (settings,)
    source = (settings.model_config_file, settings.model_repository)
    if source not in _read:
        _read[source] = _read_models(settings, None)
    return tuple(_model_settings(settings, name, own) for name, own in _read[source])


def read_models(settings: Settings, config_text: str | None = None) -> tuple[Settings, ...]:
    """`served_models` as the files say now (a worker polling them), or as `config_text` says (a config given
    over gRPC, its relative base paths read from MODEL_CONFIG_FILE's directory); SettingsError as there."""
    return tuple(_model_settings(settings, name, own) for name, own in _read_models(settings, config_text))


def serves_catalog(settings: Settings) -> bool:
    """Whether the models served come from a config file or a repository, which may change while serving."""
    return bool(settings.model_config_file or settings.model_repository)


def config_file_stamp(settings: Settings) -> tuple:
    """MODEL_CONFIG_FILE's (size, modification time) now: a change means it is to be read again; () without one."""
    try:
        status = os.stat(Path(settings.model_config_file).expanduser())
    except (OSError, ValueError):
        return ()
    return (status.st_size, status.st_mtime_ns)


def _read_models(settings: Settings, config_text: str | None) -> list[tuple[str, dict]]:
    if config_text is not None:
        directory = Path(settings.model_config_file or ".").expanduser().parent
        models = _from_config_text(settings, config_text, "the model config given", directory)
    elif settings.model_config_file:
        models = _from_config_file(settings)
    else:
        models = _from_repository(settings)
    names = [name for name, _ in models]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SettingsError(f"{_source(settings)}: the model name {repeated[0]!r} is given to more than one model")
    return models


def _source(settings: Settings) -> str:
    if settings.model_config_file:
        return f"MODEL_CONFIG_FILE={settings.model_config_file!r}"
    return f"MODEL_REPOSITORY={settings.model_repository!r}"


def _from_config_file(settings: Settings) -> list[tuple[str, dict]]:
    """TF Serving's `ModelServerConfig` in text format; a relative `base_path` is read from the file's directory."""
    path = Path(settings.model_config_file).expanduser()
    where = _source(settings)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise SettingsError(f"{where} cannot be read: {reason}") from None
    return _from_config_text(settings, text, where, path.parent)


def _from_config_text(settings: Settings, text: str, where: str, directory: Path) -> list[tuple[str, dict]]:
    try:
        config = text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as error:
        raise SettingsError(f"{where} is not TF Serving's model config in text format: {error}") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise SettingsError(f"{where}: custom_model_config is not supported; list the models in model_config_list")
    models = []
    for entry in config.model_config_list.config:
        name = _checked_name(entry.name, where)
        if not entry.base_path:
            raise SettingsError(f"{where}: model {name!r} has no base_path")
        if entry.model_platform not in BACKENDS:
            known = ", ".join(repr(platform) for platform in BACKENDS if platform)
            raise SettingsError(f"{where}: model {name!r} has model_platform {entry.model_platform!r}; use {known}")
        base_path = (directory / Path(entry.base_path).expanduser()).resolve()
        own = {"model_backend": BACKENDS[entry.model_platform]} if entry.model_platform else {}
        if entry.HasField("model_version_policy"):
            own["model_version_policy"] = _policy_text(entry.model_version_policy)
        if entry.version_labels:
            own["model_version_labels"] = ",".join(
                f"{label}={number}" for label, number in entry.version_labels.items()
            )
        models.append((name, _own_settings(settings, name, base_path, own, where)))
    if not models:
        raise SettingsError(f"{where} lists no model: add a `config {{ name: ... base_path: ... }}`")
    return models


def _from_repository(settings: Settings) -> list[tuple[str, dict]]:
    """Every directory of the repository (hidden ones aside) is a model named by its directory."""
    where = _source(settings)
    root = Path(settings.model_repository).expanduser()
    try:
        directories = [entry for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")]
    except OSError as error:
        raise SettingsError(f"{where} cannot be read: {error.strerror}") from None
    models = []
    for entry in sorted(directories, key=lambda entry: entry.name):
        name = _checked_name(entry.name, where)
        models.append((name, _own_settings(settings, name, Path(entry.path).resolve(), {}, where)))
    if not models:
        raise SettingsError(f"{where} holds no model: add a directory per model, with its numbered versions inside")
    return models


def _own_settings(settings: Settings, name: str, base_path: Path, own: dict, where: str) -> dict:
    """What one model sets itself: its `settings.env`'s, then what the configuration says of it; checked."""
    if not base_path.is_dir():
        raise SettingsError(f"{where}: model {name!r} has base_path {str(base_path)!r}, which is not a directory")
    side_file = base_path / MODEL_SETTINGS_FILE
    values = read_model_settings(side_file) if side_file.is_file() else {}
    values |= own | {"model_name": name, "model_base_path": str(base_path)}
    _model_settings(settings, name, values, where)
    return values


def _model_settings(settings: Settings, name: str, own: dict, where: str = "") -> Settings:
    """One model's settings: the server's (as a SIGHUP left them), with what the model sets itself."""
    blank = {"model_config_file": "", "model_repository": ""}  # a model's settings name one model
    try:
        return dataclasses.replace(settings, **own, **blank)
    except SettingsError as error:
        raise SettingsError(f"{where or _source(settings)}: model {name!r}: {error}") from None


def _checked_name(name: str, where: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise SettingsError(
            f"{where}: the model name {name!r} is not 1 to 128 letters, digits, `_`, `.` and `-`, "
            "starting with a letter or digit"
        )
    return name


def _policy_text(policy) -> str:
    """TF Serving's `ServableVersionPolicy` as MODEL_VERSION_POLICY's text."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return "all"
    if kind == "specific":
        return "specific:" + ",".join(str(number) for number in policy.specific.versions)
    return f"latest:{policy.latest.num_versions or 1}"
