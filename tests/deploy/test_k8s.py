"""The Kubernetes manifests: valid against the cluster's schemas, and consistent with the service.

Validated offline with kubernetes-validate's bundled schemas (no cluster here). The
consistency checks tie the numbers in the manifests to what the service does: the probes'
routes, the grace period against Gunicorn's graceful timeout, the resources against the
measured footprint.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format

from scripts import capacity
from scripts.launcher import PROJECT_ROOT
from service.backends.footprint import measure_footprint
from service.settings import load_settings
from service.tfserving_messages import ModelServerConfig

MANIFESTS = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
RESOURCE_FILES = ["configmap.yaml", "models-configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
_QUANTITY = re.compile(r"(\d+)(Mi|Gi)")


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def mebibytes(quantity: str) -> int:
    number, unit = _QUANTITY.fullmatch(quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


@pytest.fixture(scope="module")
def container() -> dict:
    return load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def test_kustomization_lists_every_manifest():
    assert sorted(load("kustomization.yaml")["resources"]) == sorted(RESOURCE_FILES)
    assert sorted(p.name for p in MANIFESTS.glob("*.yaml")) == sorted([*RESOURCE_FILES, "kustomization.yaml"])


@pytest.mark.parametrize("name", RESOURCE_FILES)
def test_manifest_is_valid_for_kubernetes(name):
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_refused():
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_configmap_holds_valid_settings_for_a_container():
    data = load("configmap.yaml")["data"]
    settings = load_settings(data)  # raises SettingsError on any bad value
    assert settings.log_format == "json" and settings.workers == 0


def test_the_model_config_is_valid_and_mounted_where_model_config_file_would_name_it(container, tmp_path):
    """The ConfigMap's config parses as the server parses it, and the settings it takes hold with it."""
    text = load("models-configmap.yaml")["data"]["models.config"]
    commented = re.search(r'# MODEL_CONFIG_FILE: "(?P<path>[^"]+)"', (MANIFESTS / "configmap.yaml").read_text())
    path = PurePosixPath(commented["path"])
    assert path.name == "models.config"
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    models_config_map = load("models-configmap.yaml")["metadata"]["name"]
    (volume,) = [volume for volume in pod["volumes"] if volume.get("configMap", {}).get("name") == models_config_map]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["name"] == volume["name"]]
    assert mount["mountPath"] == str(path.parent) and "subPath" not in mount, "a subPath mount never sees an edit"
    config = text_format.Parse(text, ModelServerConfig())  # as service/catalog.py reads it
    names = [entry.name for entry in config.model_config_list.config]
    assert names == ["digits", "heavy", "digits-onnx"]
    assert all(entry.base_path.startswith("/models/") for entry in config.model_config_list.config)
    data = load("configmap.yaml")["data"]
    settings = load_settings({**data, "MODEL_CONFIG_FILE": commented["path"]})
    assert settings.model_config_poll_s > 0, "an edit of the ConfigMap serves without a restart"


def test_probes_use_the_services_health_routes(container):
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    grpc_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "grpc")
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port == load_settings({}).grpc_port
    assert container["readinessProbe"].get("grpc", {}).get("service", "") == "", "the whole server's health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "load + warm-up of a large model"


def test_grace_period_covers_the_pre_stop_pause_and_the_graceful_timeout(container):
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful_timeout_s = load_settings(load("configmap.yaml")["data"]).graceful_timeout_s
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + graceful_timeout_s


@pytest.mark.slow
def test_resources_follow_the_measured_footprint(container, demo_model_path, tmp_path):
    settings = load_settings({"MODEL_PATH": str(demo_model_path)})
    footprint = measure_footprint(str(demo_model_path), settings.padded_batch_sizes(), str(tmp_path / "cache.json"))
    cores = int(container["resources"]["requests"]["cpu"])
    derived = capacity.pod_resources(footprint.worker_bytes / 2**20, cores)
    resources = container["resources"]
    assert resources["limits"]["cpu"] == resources["requests"]["cpu"], "a CPU quota the planner sizes workers from"
    assert mebibytes(resources["requests"]["memory"]) >= mebibytes(derived["requests"]["memory"])
    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(derived["limits"]["memory"])


def test_hpa_scales_the_deployment_on_cpu_and_the_pdb_keeps_pods_up():
    hpa, pdb = load("hpa.yaml"), load("pdb.yaml")
    deployment = load("deployment.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert load("service.yaml")["spec"]["selector"].items() <= labels.items()
