"""The KServe InferenceService: its predictor validated offline as the Pod it becomes, and tied to the service.

No cluster and no KServe CRD here: the predictor is a Pod spec plus KServe's component fields, so
it is validated strictly as a Pod once those fields are set aside, and the KServe fields used are
checked against the ones KServe's v1beta1 API declares.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from scripts.launcher import PROJECT_ROOT
from service.catalog import NAME_PATTERN
from service.settings import load_settings
from service.web.auth import OPEN_PATHS

MANIFEST = PROJECT_ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KUBERNETES_VERSION = "1.30"
# KServe v1beta1's ComponentExtensionSpec fields, set on a predictor beside its Pod spec.
KSERVE_COMPONENT_FIELDS = frozenset(
    {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
     "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy"}
)  # fmt: skip


@pytest.fixture(scope="module")
def service() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def as_pod(predictor: dict) -> dict:
    spec = {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


def test_an_inference_service_whose_predictor_is_a_valid_pod(service):
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(service["spec"]) == {"predictor"}
    kubernetes_validate.validate(as_pod(service["spec"]["predictor"]), KUBERNETES_VERSION, strict=True)
    assert service["spec"]["predictor"]["minReplicas"] <= service["spec"]["predictor"]["maxReplicas"]


def test_a_mistake_in_the_predictor_is_refused(service):
    broken = copy.deepcopy(service["spec"]["predictor"])
    broken["containers"][0]["readinessProbe"]["periodSecond"] = 5  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(as_pod(broken), KUBERNETES_VERSION, strict=True)


def test_the_container_serves_v2_on_its_one_port_with_valid_settings(service):
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]  # Knative routes one port
    settings = load_settings({variable["name"]: variable["value"] for variable in container["env"]})
    assert port["name"] == "http1" and port["containerPort"] == settings.port and settings.host == "0.0.0.0"
    assert settings.grpc_port == 0, "gRPC would need a second port"
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": settings.port}
        assert path in OPEN_PATHS, "probes carry no API key"


def test_the_grace_period_covers_the_pre_stop_pause_and_the_graceful_timeout(service):
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    pause_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    settings = load_settings({variable["name"]: variable["value"] for variable in container["env"]})
    assert predictor["terminationGracePeriodSeconds"] > pause_s + settings.graceful_timeout_s


@pytest.fixture(scope="module")
def multi_model() -> dict:
    """deploy/kserve/multi-model.yaml's documents, by kind."""
    documents = yaml.safe_load_all((PROJECT_ROOT / "deploy" / "kserve" / "multi-model.yaml").read_text())
    return {document["kind"]: document for document in documents}


def test_the_multi_model_runtime_is_a_valid_pod_serving_a_repository_where_kserves_agent_loads(multi_model):
    """KServe's model agent downloads into /mnt/models/<name> and posts the V2 load to localhost:8080."""
    runtime = multi_model["ServingRuntime"]["spec"]
    assert runtime["multiModel"] is True and runtime["protocolVersions"] == ["v2"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": []}}
    pod["spec"]["containers"] = runtime["containers"]
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    (container,) = runtime["containers"]
    settings = load_settings({variable["name"]: variable["value"] for variable in container["env"]})
    assert (settings.model_repository, settings.port, settings.host) == ("/mnt/models", 8080, "0.0.0.0")
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert settings.model_config_poll_s > 0 and "/v2/repository/models" not in OPEN_PATHS
    formats = {entry["name"] for entry in runtime["supportedModelFormats"]}
    assert formats == {"tensorflow", "onnx"}, "the backends the server loads"


def test_the_inference_service_uses_the_runtime_and_the_trained_models_name_it(multi_model):
    service, trained = multi_model["InferenceService"], multi_model["TrainedModel"]
    predictor = service["spec"]["predictor"]
    assert predictor["model"]["runtime"] == multi_model["ServingRuntime"]["metadata"]["name"]
    assert "storageUri" not in predictor["model"], "the TrainedModels bring the models"
    formats = multi_model["ServingRuntime"]["spec"]["supportedModelFormats"]
    assert predictor["model"]["modelFormat"]["name"] in {entry["name"] for entry in formats}
    assert trained["spec"]["inferenceService"] == service["metadata"]["name"]
    assert NAME_PATTERN.fullmatch(trained["metadata"]["name"]), "served under its name"
    (container,) = multi_model["ServingRuntime"]["spec"]["containers"]
    pause_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    settings = load_settings({variable["name"]: variable["value"] for variable in container["env"]})
    assert predictor["terminationGracePeriodSeconds"] > pause_s + settings.graceful_timeout_s
