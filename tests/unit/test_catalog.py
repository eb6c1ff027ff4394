"""The catalog: one model, TF Serving's model config file and Triton's repository, each model with its own settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.catalog import served_models
from service.settings import Settings, SettingsError, load_settings


def model_dir(root: Path, name: str, settings_env: str | None = None) -> Path:
    """A base path with one version directory, and `settings.env` when given."""
    base = root / name
    (base / "1").mkdir(parents=True)
    if settings_env is not None:
        (base / "settings.env").write_text(settings_env)
    return base


def config_file(root: Path, text: str) -> Settings:
    path = root / "models.config"
    path.write_text(text)
    return load_settings({"MODEL_CONFIG_FILE": str(path), "MAX_QUEUE": "300"})


def test_one_model_is_a_catalog_of_one():
    settings = load_settings({"MODEL_PATH": "/m/digits.keras"})
    assert served_models(settings) == (settings,)


def test_a_config_file_lists_models_in_order_with_their_policy_labels_platform_and_settings(tmp_path):
    model_dir(tmp_path, "digits", "MAX_QUEUE=64\nBATCH_TIMEOUT_MS=3\nMODEL_VERSION_POLICY=all\n")
    heavy = model_dir(tmp_path, "elsewhere/heavy")
    settings = config_file(
        tmp_path,
        f"""
        model_config_list {{
          config {{
            name: "digits" base_path: "digits" model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 1 versions: 3 }} }}
            version_labels {{ key: "stable" value: 1 }}
            version_labels {{ key: "canary" value: 3 }}
          }}
          config {{ name: "heavy" base_path: "{heavy}" model_platform: "onnx" }}
        }}
        """,
    )
    digits, second = served_models(settings)
    assert (digits.model_name, second.model_name) == ("digits", "heavy")
    assert digits.model_base_path == str(tmp_path / "digits") and second.model_base_path == str(heavy)
    assert (digits.model_backend, second.model_backend) == ("tensorflow", "onnx")
    assert digits.model_version_policy == "specific:1,3"  # the config file's own field wins over settings.env
    assert dict(part.split("=") for part in digits.model_version_labels.split(",")) == {"stable": "1", "canary": "3"}
    assert (digits.max_queue, digits.batch_timeout_ms) == (64, 3.0)  # its settings.env
    assert (second.max_queue, second.batch_timeout_ms, second.model_version_policy) == (300, 1.0, "latest")
    assert digits.model_config_file == "" and digits.served_model_name == "digits"


@pytest.mark.parametrize(
    ("policy", "text"),
    [("latest { num_versions: 2 }", "latest:2"), ("latest {}", "latest:1"), ("all {}", "all")],
)
def test_tf_serving_version_policies_read_as_the_settings_policy(tmp_path, policy, text):
    model_dir(tmp_path, "m")
    settings = config_file(
        tmp_path, f'model_config_list {{ config {{ name: "m" base_path: "m" model_version_policy {{ {policy} }} }} }}'
    )
    assert served_models(settings)[0].model_version_policy == text


def test_a_repository_serves_each_directory_by_name_and_skips_hidden_ones(tmp_path):
    model_dir(tmp_path, "zeta")
    model_dir(tmp_path, "alpha", "CONCURRENT_BATCHES=1\nMODEL_BACKEND=onnx\n")
    model_dir(tmp_path, ".staging")
    (tmp_path / "README.md").write_text("not a model")
    models = served_models(load_settings({"MODEL_REPOSITORY": str(tmp_path)}))
    assert [model.model_name for model in models] == ["alpha", "zeta"]
    assert (models[0].concurrent_batches, models[0].model_backend) == (1, "onnx")
    assert (models[1].concurrent_batches, models[1].model_backend) == (2, "auto")
    assert models[1].model_base_path == str(tmp_path / "zeta")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'm' base_path: 'm' ", "is not TF Serving's model config in text format"),
        ("model_config_list { config { name: 'm' colour: 'blue' } }", 'no field named "colour"'),
        ("model_config_list { config { base_path: 'm' } }", "the model name '' is not 1 to 128"),
        ("model_config_list { config { name: 'a/b' base_path: 'm' } }", "the model name 'a/b'"),
        ("model_config_list { config { name: 'm' } }", "model 'm' has no base_path"),
        ("model_config_list { config { name: 'm' base_path: 'none' } }", "which is not a directory"),
        ("model_config_list { config { name: 'm' base_path: 'm' model_platform: 'pytorch' } }", "'pytorch'; use"),
        ("model_config_list { }", "lists no model"),
        (
            "model_config_list { config { name: 'm' base_path: 'm' } config { name: 'm' base_path: 'm' } }",
            "the model name 'm' is given to more than one model",
        ),
        ("custom_model_config { }", "custom_model_config is not supported"),
    ],
)
def test_a_config_file_that_cannot_be_served_is_refused_naming_the_file_and_the_model(tmp_path, text, message):
    model_dir(tmp_path, "m")
    with pytest.raises(SettingsError, match="MODEL_CONFIG_FILE=") as refused:
        served_models(config_file(tmp_path, text))
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("settings_env", "message"),
    [
        ("PORT=9000\n", "PORT cannot differ between models; a model may set BATCH_POLICY"),
        ("MAX_QUEUE=4\nMAX_BATCH_SIZE=8\n", "model 'm': MAX_QUEUE=4 is smaller than MAX_BATCH_SIZE=8"),
        ("MAX_QUEUE=lots\n", "MAX_QUEUE='lots' is not a valid int"),
    ],
)
def test_a_models_settings_file_may_set_only_valid_per_model_settings(tmp_path, settings_env, message):
    model_dir(tmp_path, "m", settings_env)
    with pytest.raises(SettingsError) as refused:
        served_models(load_settings({"MODEL_REPOSITORY": str(tmp_path)}))
    assert message in str(refused.value)


def test_an_empty_or_missing_repository_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="holds no model"):
        served_models(load_settings({"MODEL_REPOSITORY": str(tmp_path)}))
    with pytest.raises(SettingsError, match="cannot be read: No such file"):
        served_models(load_settings({"MODEL_REPOSITORY": str(tmp_path / "none")}))


def test_one_source_of_models_at_a_time():
    with pytest.raises(SettingsError, match="MODEL_CONFIG_FILE and MODEL_REPOSITORY are set together"):
        load_settings({"MODEL_CONFIG_FILE": "/a", "MODEL_REPOSITORY": "/b"})


def test_the_files_are_read_once_so_workers_started_later_serve_the_same_models(tmp_path):
    model_dir(tmp_path, "alpha", "MAX_QUEUE=64\n")
    settings = load_settings({"MODEL_REPOSITORY": str(tmp_path)})
    assert [model.model_name for model in served_models(settings)] == ["alpha"]  # the master, at start
    model_dir(tmp_path, "beta")
    (tmp_path / "alpha" / "settings.env").write_text("MAX_QUEUE=128\n")
    reloaded = dataclasses.replace(settings, batch_timeout_ms=5.0)  # a SIGHUP's reloadable settings
    (alpha,) = served_models(reloaded)  # a worker forked later
    assert (alpha.model_name, alpha.max_queue, alpha.batch_timeout_ms) == ("alpha", 64, 5.0)
