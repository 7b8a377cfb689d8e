"""Security properties of the real stack, TorchServe started with the project's config.properties.

Extends tests/integration/test_torchserve.py (token required on inference and management; store-only
registration for http://, file://, ../ and absolute paths) without repeating it."""

from __future__ import annotations

import ipaddress
import logging
import uuid

import httpx
import psutil
import pytest

from stack.torchserve import TorchServe
from tests.reliability.conftest import assert_error_body

pytestmark = pytest.mark.integration

MARKER = f"zq{uuid.uuid4().hex}qz"  # unique: if it shows up anywhere, it came from our requests


def listening(pid: int) -> list[tuple[str, int]]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sorted(
        {
            (c.laddr.ip, c.laddr.port)
            for p in procs
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
    )


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_every_torchserve_listener_is_on_loopback(torchserve: TorchServe) -> None:
    assert torchserve.process is not None
    sockets = listening(torchserve.process.pid)
    ports = torchserve.ports

    assert {port for _, port in sockets} >= {
        ports.inference, ports.management, ports.metrics, ports.grpc_inference, ports.grpc_management
    }  # fmt: skip
    assert all(is_loopback(ip) for ip, _ in sockets), sockets  # Java shows 127.0.0.1 as ::ffff:127.0.0.1


def test_keys_are_scoped(torchserve: TorchServe) -> None:
    """Each key opens its own API only; a wrong key and the API key alone are refused (TorchServe answers 400)."""
    keys = torchserve.keys()
    inference = httpx.post(
        f"{torchserve.inference_url}/predictions/cola",
        json={"text": "a"},
        headers={"Authorization": f"Bearer {keys['management']}"},
    )
    management = httpx.get(
        f"{torchserve.management_url}/models", headers={"Authorization": f"Bearer {keys['inference']}"}
    )
    forged = httpx.get(f"{torchserve.management_url}/models", headers={"Authorization": f"Bearer {MARKER}"})
    token = httpx.post(
        f"{torchserve.management_url}/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {keys['inference']}"},
    )

    for response in (inference, management, forged, token):
        assert response.status_code == 400, response.text
        assert "InvalidKey" in response.text
    assert torchserve.keys() == keys  # nothing was rotated


@pytest.mark.parametrize(
    "url",
    [
        "https://example.invalid/evil.mar",
        "HTTP://127.0.0.1:1/evil.mar",
        "ftp://127.0.0.1/evil.mar",
        "s3://bucket/evil.mar",
        "..%2Fcola-1.0.mar",
        "./../cola-1.0.mar",
        "file:///etc/passwd",
    ],
)
def test_registration_outside_the_store_is_refused(torchserve: TorchServe, url: str) -> None:
    key = torchserve.keys()["management"]
    response = httpx.post(
        f"{torchserve.management_url}/models",
        params={"url": url, "initial_workers": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code in (400, 404), response.text
    listed = httpx.get(f"{torchserve.management_url}/models", headers={"Authorization": f"Bearer {key}"}).json()
    assert sorted(m["modelName"] for m in listed["models"]) == ["cola", "sentiment"]


def test_the_gateway_exposes_no_management_operation(gateway: httpx.Client) -> None:
    paths = gateway.get("/openapi.json").json()["paths"]
    operations = {(method.upper(), path) for path, ops in paths.items() for method in ops}

    assert operations == {
        ("POST", "/generate"), ("POST", "/generate/batch"), ("POST", "/predict"), ("POST", "/predict/batch"),
        ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/models"),
    }  # fmt: skip
    for path in ("/models", "/models/cola", "/models/cola/1.0/set-default", "/token", "/ping", "/predictions/cola",
                 "/api-description", "/metrics/../models", "/workflows"):  # fmt: skip
        for method in ("GET", "POST", "PUT", "DELETE"):
            if method == "GET" and path in ("/models", "/metrics/../models"):  # the gateway's read-only catalogue
                catalogue = gateway.get(path)
                assert catalogue.status_code == 200
                assert "key" not in catalogue.text.lower()
                continue
            response = gateway.request(method, path)
            assert response.status_code in (404, 405), (method, path, response.status_code)
            assert_error_body(response)


def test_error_bodies_and_info_logs_never_repeat_client_text(
    gateway: httpx.Client, torchserve: TorchServe, caplog: pytest.LogCaptureFixture
) -> None:
    long = MARKER * (6_000 // len(MARKER) + 1)
    invalid = [
        ("/generate", {"passage": long}),
        ("/generate", {"passage": [MARKER]}),
        ("/generate", {"passage": {"nested": MARKER}}),
        ("/predict", {"text": MARKER, "extra": MARKER}),
        ("/predict", {"texts": MARKER}),
        ("/predict/batch", {"texts": [MARKER] * 65}),
        ("/predict/batch", {"texts": ["ok", long]}),
        ("/generate/batch", {"passages": MARKER}),
        ("/generate/batch", {"passages": [MARKER, 3]}),
        ("/generate", [MARKER]),
        ("/generate", MARKER),
    ]
    caplog.set_level(logging.DEBUG, logger="gateway")
    bodies = [gateway.post(path, json=body) for path, body in invalid]
    bodies += [
        gateway.post(
            "/generate", content=f'{{"passage": "{MARKER}"'.encode(), headers={"Content-Type": "application/json"}
        ),
        gateway.post("/generate", content=MARKER.encode(), headers={"Content-Type": "text/plain"}),
        gateway.post("/generate", json={"passage": "a"}, headers={"X-Model-Version": MARKER}),
        gateway.get(f"/{MARKER}"),
        gateway.post(f"/generate/{MARKER}", json={"passage": "a"}),
        gateway.get(f"/ready?{MARKER}=1"),
    ]
    valid = [
        gateway.post("/generate", json={"passage": MARKER}),
        gateway.post("/predict/batch", json={"texts": [MARKER, MARKER]}),
        gateway.post("/generate", json={"passage": MARKER}, headers={"X-Model-Version": "9.9"}),  # 404 version
    ]

    assert all(r.status_code >= 400 for r in bodies[:-1])
    assert [r.status_code for r in valid] == [200, 200, 404]
    for response in bodies + valid:
        assert MARKER not in response.text, (response.request.url, response.text[:300])
        if response.status_code >= 400:
            assert_error_body(response)
    gateway_lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert not [line for line in gateway_lines if MARKER in line]
    for log_file in torchserve.log_dir.rglob("*"):
        if log_file.is_file():
            assert MARKER not in log_file.read_text(errors="replace"), log_file
