"""deploy/: the KServe InferenceService, its TorchServe config and the gateway manifests parse and agree with the
archives (names, versions, batching), config.properties, the gateway settings and the gateway image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import Dockerfile, exec_form, read_properties
from torchserve_protocol.archives import ARCHIVE_RE
from torchserve_protocol.layout import REPO
from training.package import ServingConfig

DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def kserve_config() -> dict[str, str]:
    return read_properties(DEPLOY / "kserve" / "config.properties")


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, over every YAML file under deploy/."""
    docs = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["metadata"]["namespace"] == "bert-serving", path
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_snapshot_serves_each_gateway_model_from_a_well_named_archive(kserve_config: dict[str, str]) -> None:
    snapshot = json.loads(kserve_config["model_snapshot"])
    defaults = Settings()
    assert set(snapshot["models"]) == {defaults.generate_model, defaults.predict_model}
    assert snapshot["modelCount"] == len(snapshot["models"])
    serving = ServingConfig()
    for name, versions in snapshot["models"].items():
        assert len(versions) == 1, "one version per model per revision: no default-version ambiguity"
        for version, entry in versions.items():
            match = ARCHIVE_RE.match(entry["marName"])
            assert match, entry["marName"]
            assert (match.group("name"), match.group("version")) == (name, version)
            assert entry["defaultVersion"] is True
            assert (entry["minWorkers"], entry["maxWorkers"]) == (serving.min_workers, serving.max_workers)
            assert (entry["batchSize"], entry["maxBatchDelay"]) == (serving.batch_size, serving.max_batch_delay_ms)
            assert entry["responseTimeout"] == serving.response_timeout_s


def test_kserve_config_keeps_the_limits_and_locks_registration(
    kserve_config: dict[str, str], ts_config: dict[str, str]
) -> None:
    for key in ("max_request_size", "max_response_size", "job_queue_size", "default_response_timeout", "metrics_mode",
                "allowed_urls", "install_py_dep_per_model"):  # fmt: skip
        assert kserve_config[key] == ts_config[key], key
    assert kserve_config["enable_model_api"] == "false"
    assert kserve_config["model_store"] == "/mnt/models/model-store"
    management, inference = urlsplit(kserve_config["management_address"]), urlsplit(kserve_config["inference_address"])
    assert management.hostname == "127.0.0.1"  # not served to other pods
    assert management.port != inference.port


def test_inference_service_runs_torchserve_with_several_replicas(manifests: dict[tuple[str, str], Any]) -> None:
    isvc = manifests[("InferenceService", "bert-classifier")]
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"]["name"] == "pytorch"
    assert predictor["model"]["storageUri"]
    assert predictor["minReplicas"] >= 2
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
    assert env["TS_DECODE_INPUT_REQUEST"] == "false"  # as stack/torchserve.py runs the handler
    context = predictor["model"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]


def test_gateway_reaches_torchserve_through_the_service(
    manifests: dict[tuple[str, str], Any], kserve_config: dict[str, str], dockerfile: Dockerfile
) -> None:
    service = manifests[("Service", "bert-classifier-torchserve")]
    assert service["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "bert-classifier"}
    port = urlsplit(kserve_config["inference_address"]).port
    assert service["spec"]["ports"][0]["targetPort"] == port
    policy = manifests[("NetworkPolicy", "torchserve-from-gateway-only")]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert port in [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]

    deployment = manifests[("Deployment", "gateway")]
    pod = deployment["spec"]["template"]["spec"]
    assert (
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        == deployment["spec"]["template"]["metadata"]["labels"]
    )
    edge, container = pod["containers"]  # the edge in front (the Service's port), the gateway behind it
    assert (edge["name"], container["name"]) == ("edge", "gateway")
    on_loopback = exec_form(dockerfile.stages["gateway"].args("CMD")[-1])
    on_loopback[on_loopback.index("--host") + 1] = "127.0.0.1"  # only the edge, in the same pod, reaches it
    assert container["command"] == on_loopback
    assert {e["name"]: e["value"] for e in edge["env"]}["EDGE_UPSTREAM"] == "127.0.0.1:8000"
    assert edge["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert manifests[("Service", "gateway")]["spec"]["ports"][0]["targetPort"] == edge["ports"][0]["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(name.startswith(ENV_PREFIX) for name in env)
    settings = Settings.model_validate({k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})
    url = urlsplit(settings.inference_base)
    assert (url.hostname, url.port) == (service["metadata"]["name"], port)
    assert settings.ready_probe == "inference"  # management is not reachable from the gateway
    assert "127.0.0.1:8000/ready" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert pod["securityContext"]["runAsUser"] == 10002  # the gateway image's user (Dockerfile: useradd --uid 10002)

    (mount,) = container["volumeMounts"]
    assert Path(env["GATEWAY_KEY_FILE"]).parent == Path(mount["mountPath"])
    secret = manifests[("Secret", pod["volumes"][0]["secret"]["secretName"])]
    keys = json.loads(secret["stringData"][Path(env["GATEWAY_KEY_FILE"]).name])
    assert set(keys) == {"management", "inference", "API"}
    assert kserve_config["disable_token_authorization"] == "true"  # so the placeholder keys are ignored


def test_gateway_pods_reach_only_torchserve_and_dns(
    manifests: dict[tuple[str, str], Any], kserve_config: dict[str, str]
) -> None:
    deployment = manifests[("Deployment", "gateway")]
    edge, _gateway = deployment["spec"]["template"]["spec"]["containers"]  # clients reach the edge's port only
    policy = manifests[("NetworkPolicy", "gateway")]["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["ingress"] == [{"ports": [{"port": p["containerPort"]} for p in edge["ports"]]}]
    torchserve, dns = policy["egress"]
    selector = manifests[("Service", "bert-classifier-torchserve")]["spec"]["selector"]
    assert torchserve["to"] == [{"podSelector": {"matchLabels": selector}}]
    assert torchserve["ports"] == [{"port": urlsplit(kserve_config["inference_address"]).port}]
    assert "to" not in dns
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}


def test_no_pod_mounts_a_service_account_token(manifests: dict[tuple[str, str], Any]) -> None:
    pods = [
        manifests[("Deployment", "gateway")]["spec"]["template"]["spec"],
        manifests[("InferenceService", "bert-classifier")]["spec"]["predictor"],  # a pod spec, and more
    ]
    assert [pod["automountServiceAccountToken"] for pod in pods] == [False, False]
