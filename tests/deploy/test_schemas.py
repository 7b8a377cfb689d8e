"""Every Kubernetes object under deploy/ against the schema the API server holds it to: Kubernetes' own JSON schemas
(strict: an unknown field is an error) and KServe's InferenceService CRD, both vendored in tests/deploy/schemas/
(SOURCE.md: where from, which version, how to refresh). A kind without a vendored schema fails, so a new manifest
cannot skip the check, and broken copies show that the check can fail."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource

from torchserve_protocol.layout import REPO

DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES = SCHEMAS / "kubernetes-v1.37.0"  # kubernetes-validate's v1.37.0-local-strict schemas
KSERVE = SCHEMAS / "kserve-v0.20.0"  # the v1beta1 openAPIV3Schema of KServe's InferenceService CRD
DEFINITIONS = "https://kubernetes.io/api/_definitions.json"  # the $id the Kubernetes schemas' $refs resolve to
OBJECT_META = f"{DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# Files under deploy/ that are not Kubernetes objects, each with the test that reads it.
NOT_MANIFESTS = {
    "deploy/kserve/config.properties": "TorchServe's config in the storageUri: tests/deploy/test_manifests.py",
    "deploy/grafana/canary-dashboard.json": (
        "a Grafana dashboard, not a Kubernetes object: tests/integration/test_canary.py"
    ),
}

# The keywords the CRD schema may use, all read by this check as the API server reads them: the JSON Schema ones mean
# the same in OpenAPI 3.0 (the CRD's dialect) as in draft 2020-12. Not checked here: `format` (as jsonschema's
# default) and the uniqueness of set items and list-map keys (x-kubernetes-list-type). A refresh that brings any
# other keyword (CEL rules in x-kubernetes-validations, `nullable`, ...) fails
# test_the_crd_schema_uses_only_what_this_check_reads.
CRD_KEYWORDS = {
    "type", "properties", "required", "items", "additionalProperties", "anyOf", "enum", "pattern", "format", "default",
    "minimum", "maximum", "minItems", "minLength", "maxLength", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}  # fmt: skip


def subschemas(node: dict[str, Any]) -> list[dict[str, Any]]:
    nested = [node[key] for key in ("items", "additionalProperties") if isinstance(node.get(key), dict)]
    return [*node.get("properties", {}).values(), *nested, *node.get("anyOf", [])]


def strict(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema as the API server applies it with strict field validation (kubectl's default): an object has the
    fields its schema names, unless it is a map (additionalProperties) or keeps unknown fields."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {name: strict(child) for name, child in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = strict(node[key])
    if "anyOf" in node:
        node["anyOf"] = [strict(child) for child in node["anyOf"]]
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    return node


def schema_name(doc: dict[str, Any]) -> str:
    """kubernetes-validate's file name: ``apps/v1`` Deployment -> deployment-apps-v1.json (the group's domain goes)."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    return f"{doc['kind'].lower()}-{group_version}.json"


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@cache
def registry() -> Registry:
    return Registry().with_resource(DEFINITIONS, Resource.from_contents(load(KUBERNETES / "_definitions.json")))


@cache
def validator(name: str) -> Draft202012Validator:
    """The validator for a vendored schema file; LookupError when none is vendored for that kind and version."""
    if (KUBERNETES / name).is_file():
        return Draft202012Validator(load(KUBERNETES / name), registry=registry())
    if (KSERVE / name).is_file():
        crd = strict(load(KSERVE / name))
        crd["properties"]["metadata"] = {"$ref": OBJECT_META}  # the API server checks a custom resource's metadata
        return Draft202012Validator(crd, registry=registry())
    raise LookupError(f"no schema {name} in {KUBERNETES.name} or {KSERVE.name}: vendor it (tests/deploy/schemas)")


def errors(doc: dict[str, Any]) -> list[ValidationError]:
    return sorted(validator(schema_name(doc)).iter_errors(doc), key=lambda e: list(e.absolute_path))


def manifests() -> dict[str, dict[str, Any]]:
    """file:kind/name -> document, for every YAML document under deploy/; empty ones are skipped, as kubectl does."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                name = f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}"
                assert name not in found, f"{name} twice"
                found[name] = doc
    return found


MANIFESTS = manifests()


def test_every_file_under_deploy_is_validated_or_named() -> None:
    files = {str(p.relative_to(REPO)) for p in DEPLOY.rglob("*") if p.is_file()}
    validated = {name.partition(":")[0] for name in MANIFESTS}
    assert files - validated == set(NOT_MANIFESTS)
    assert {"InferenceService", "Deployment", "Service", "Secret", "NetworkPolicy"} <= {
        doc["kind"] for doc in MANIFESTS.values()
    }


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_its_schema(name: str) -> None:
    found = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors(MANIFESTS[name])]
    assert found == []


def test_a_kind_without_a_vendored_schema_fails() -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "gateway"}}
    with pytest.raises(LookupError, match=r"horizontalpodautoscaler-autoscaling-v2\.json"):
        errors(hpa)
    with pytest.raises(LookupError):  # the same kind at another version is another schema
        errors({**MANIFESTS["deploy/gateway.yaml:Deployment/gateway"], "apiVersion": "apps/v1beta2"})


def changed(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return broken


POD = ("spec", "template", "spec")
PREDICTOR = ("spec", "predictor")


@pytest.mark.parametrize(
    ("name", "path", "value", "where"),
    [
        ("deploy/gateway.yaml:Deployment/gateway", ("spec", "replicas"), "2", ("spec", "replicas")),
        ("deploy/gateway.yaml:Deployment/gateway", (*POD, "containers", 0, "imagePullPolcy"), "Always",
         (*POD, "containers", 0)),
        ("deploy/gateway.yaml:Deployment/gateway", (*POD, "securityContext", "runAsUser"), 10002.5,
         (*POD, "securityContext", "runAsUser")),
        ("deploy/gateway.yaml:Service/gateway", ("spec", "ports", 0, "protocol"), 6, ("spec", "ports", 0, "protocol")),
        ("deploy/gateway.yaml:NetworkPolicy/torchserve-from-gateway-only", ("spec", "policyTypes"), "Ingress",
         ("spec", "policyTypes")),
        ("deploy/gateway.yaml:Secret/gateway-key-file", ("stringdata",), {}, ()),
        ("deploy/kserve/inferenceservice.yaml:InferenceService/bert-classifier", (*PREDICTOR, "minReplicas"), "3",
         (*PREDICTOR, "minReplicas")),
        ("deploy/kserve/inferenceservice.yaml:InferenceService/bert-classifier", (*PREDICTOR, "model", "storageUrl"),
         "s3://bucket/model", (*PREDICTOR, "model")),
        ("deploy/kserve/inferenceservice.yaml:InferenceService/bert-classifier", (*PREDICTOR, "replicas"), 3,
         PREDICTOR),
        ("deploy/kserve/inferenceservice.yaml:InferenceService/bert-classifier", ("metadata", "annotation"), {},
         ("metadata",)),
        ("deploy/kserve/inferenceservice.yaml:InferenceService/bert-classifier", (*PREDICTOR, "scaleMetric"), "gpu",
         (*PREDICTOR, "scaleMetric")),
    ],
    ids=["replicas-string", "unknown-container-field", "uid-float", "protocol-number", "policy-types-string",
         "secret-field-case", "isvc-min-replicas-string", "isvc-unknown-model-field", "isvc-unknown-predictor-field",
         "isvc-unknown-metadata-field", "isvc-scale-metric-not-listed"],
)  # fmt: skip
def test_a_broken_copy_is_rejected_where_it_is_broken(
    name: str, path: tuple[str | int, ...], value: object, where: tuple[str | int, ...]
) -> None:
    assert errors(MANIFESTS[name]) == []
    found = errors(changed(MANIFESTS[name], path, value))
    assert [tuple(e.absolute_path) for e in found] == [where], [e.message for e in found]


def test_the_crd_schema_uses_only_what_this_check_reads() -> None:
    used: set[str] = set()
    todo = [load(KSERVE / "inferenceservice-serving-v1beta1.json")]
    while todo:
        node = todo.pop()
        used |= set(node)
        todo += subschemas(node)
    assert used - CRD_KEYWORDS == set()
    assert "x-kubernetes-preserve-unknown-fields" in used  # the scan reaches deep: the one such node is in status


def test_every_vendored_schema_is_recorded_with_its_digest() -> None:
    """SOURCE.md names each vendored file with its sha256, so a file changed by hand (or refreshed without updating
    the record) fails."""
    source = (SCHEMAS / "SOURCE.md").read_text()
    vendored = sorted(p for p in SCHEMAS.rglob("*.json"))
    assert {p.parent for p in vendored} == {KUBERNETES, KSERVE}
    for path in vendored:
        row = f"| `{path.relative_to(SCHEMAS)}` | `{hashlib.sha256(path.read_bytes()).hexdigest()}` |"
        assert row in source, row


def test_the_deployment_doc_names_the_schema_versions() -> None:
    section = (REPO / "docs" / "deployment.md").read_text().partition("## Checked against schemas and a scanner")[2]
    kubernetes, kserve = KUBERNETES.name.removeprefix("kubernetes-"), KSERVE.name.removeprefix("kserve-")
    assert f"Kubernetes {kubernetes}" in section
    assert f"KServe {kserve}" in section
    assert "tests/deploy/schemas/SOURCE.md" in section
