"""Settings: parsed from the environment in one place, validated, and documented from the same source."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings, reload_settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_environment():
    settings = load_settings({})
    assert settings == Settings()
    assert settings.bind == "127.0.0.1:8000"
    assert settings.served_model_name == "digits"
    assert settings.padded_batch_sizes() == (1, 2, 4, 8, 16, 32)
    assert settings.request_threads == 256 + 2 * 32 + 16  # a full queue, two passes running, and some to spare


def test_environment_values_are_parsed_by_type():
    settings = load_settings(
        {"MAX_BATCH_SIZE": "12", "BATCH_TIMEOUT_MS": "2.5", "WORKER_CLASS": "gevent", "MODEL_PATH": "/m/resnet/"}
    )
    assert settings.max_batch_size == 12 and settings.batch_timeout_ms == 2.5
    assert settings.padded_batch_sizes() == (1, 2, 4, 8, 12)
    assert settings.served_model_name == "resnet"
    assert settings.gevent_connections == 1000


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_BATCH_SIZE": "many"}, "MAX_BATCH_SIZE='many' is not a valid int"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE=0 is below its minimum 1"),
        ({"WORKER_CLASS": "sync"}, "WORKER_CLASS='sync' is not one of gevent, gthread"),
        ({"RAM_HEADROOM": "1.5"}, "RAM_HEADROOM=1.5 is above its maximum"),
        ({"MAX_QUEUE": "4", "MAX_BATCH_SIZE": "8"}, "MAX_QUEUE=4 is smaller than MAX_BATCH_SIZE=8"),
        ({"BATCH_SIZES": "1,4,x"}, "not a comma-separated list"),
        ({"BATCH_SIZES": "1,4,16"}, "must be positive and end at MAX_BATCH_SIZE=32"),
    ],
)
def test_bad_values_name_the_setting(environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(environ)


def test_explicit_batch_sizes():
    assert load_settings({"BATCH_SIZES": "1, 8, 32"}).padded_batch_sizes() == (1, 8, 32)


def test_readme_configuration_table_is_generated_from_the_declarations():
    assert settings_table() in README.read_text(), "README's table is stale: paste `python -m service.settings`"


def test_the_settings_file_is_read_over_the_environment(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("# labels move here\n\nMODEL_VERSION_LABELS = 'stable=1,canary=2'\nMAX_BATCH_SIZE=16\nAPI_KEYS=\n")
    settings = load_settings({"SETTINGS_FILE": str(path), "MAX_BATCH_SIZE": "8", "API_KEYS": "secret"})
    assert settings.model_version_labels == "stable=1,canary=2"  # quotes around a value go
    assert settings.max_batch_size == 16  # the file over the environment
    assert settings.api_keys == ""  # `NAME=` is the default, whatever the environment says


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MAX_BATCH_SIZE=many\n", r"settings.env, line 1: MAX_BATCH_SIZE='many' is not a valid int"),
        ("\nNO_SUCH_SETTING=1\n", r"settings.env, line 2: 'NO_SUCH_SETTING=1' is not `NAME=value`"),
        ("MODEL_VERSION_LABELS\n", r"line 1: 'MODEL_VERSION_LABELS' is not `NAME=value`"),
        ("SETTINGS_FILE=/elsewhere\n", r"line 1: 'SETTINGS_FILE=/elsewhere' is not `NAME=value`"),
        ("MODEL_VERSION_LABELS=canary=x\n", r"MODEL_VERSION_LABELS: 'canary=x' is not `label=version`"),
    ],
)
def test_a_bad_settings_file_names_its_line(tmp_path, text, message):
    path = tmp_path / "settings.env"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings({"SETTINGS_FILE": str(path)})


def test_an_unreadable_settings_file_says_so(tmp_path):
    with pytest.raises(SettingsError, match=r"SETTINGS_FILE='.*missing.env' cannot be read: No such file"):
        load_settings({"SETTINGS_FILE": str(tmp_path / "missing.env")})


def test_a_reload_changes_only_the_reloadable_settings_and_names_the_others(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("MODEL_VERSION_LABELS=stable=1\n")
    environ = {"SETTINGS_FILE": str(path)}
    started = load_settings(environ)
    path.write_text("MODEL_VERSION_LABELS=stable=2,canary=3\nMODEL_VERSION_POLICY=latest:2\nWORKERS=9\nPORT=9000\n")
    reloaded, ignored = reload_settings(started, environ)
    assert reloaded.model_version_labels == "stable=2,canary=3" and reloaded.model_version_policy == "latest:2"
    assert reloaded.workers == started.workers and reloaded.port == started.port  # they take a restart
    assert sorted(ignored) == ["PORT", "WORKERS"]


def test_a_reload_that_does_not_validate_changes_nothing(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("MODEL_VERSION_LABELS=stable=1\n")
    environ = {"SETTINGS_FILE": str(path)}
    started = load_settings(environ)
    path.write_text("MODEL_VERSION_LABELS=stable=2\nMODEL_VERSION_POLICY=newest\n")  # one bad value
    with pytest.raises(SettingsError, match="MODEL_VERSION_POLICY='newest'"):
        reload_settings(started, environ)
    assert started.model_version_labels == "stable=1"
