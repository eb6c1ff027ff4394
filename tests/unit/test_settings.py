"""Settings: parsed from the environment in one place, validated, and documented from the same source."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings, settings_table

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
