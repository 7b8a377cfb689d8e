"""docker compose for real: build, up, the README's curls, least privilege, publishing a version through the
documented compose flow (a store that refuses the write changes nothing), two TorchServe replicas, one killed, down.

The tests run in file order on one stack (tests/compose/conftest.py), each a step of how the product is used.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.compose.commands import DOWN, GENERATE, PREDICT, REGISTER, SCALE, SET_DEFAULT, UP
from tests.compose.conftest import APP_UID, PROJECT, Compose, ready_replicas, wait_for

pytestmark = pytest.mark.compose

TIMINGS: dict[str, float] = {}


def generate(compose: Compose, passage: str = "I are a boy") -> httpx.Response:
    return httpx.post(compose.url("/generate"), json={"passage": passage}, timeout=30)


def served_versions(compose: Compose, n: int) -> set[str]:
    return {generate(compose, f"sentence {i}").headers["X-Model-Version"] for i in range(n)}


def inspect(container: str) -> dict[str, object]:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]


def test_up_builds_and_waits_until_healthy(compose: Compose) -> None:
    started = time.monotonic()
    compose.run(UP, timeout=1800)
    TIMINGS["up (build, start, healthy)"] = time.monotonic() - started
    print(f"\n[compose tier] `{UP}`: {TIMINGS['up (build, start, healthy)']:.0f}s")
    for service in ("torchserve", "gateway"):
        (container,) = compose.container_ids(service)
        assert inspect(container)["State"]["Health"]["Status"] == "healthy"  # type: ignore[index]
    (models,) = compose.run("docker compose ps -a -q models").stdout.split()
    assert inspect(models)["State"]["ExitCode"] == 0  # type: ignore[index]


def test_readme_curls_answer_the_legacy_contracts(compose: Compose) -> None:
    generated = json.loads(compose.run(GENERATE).stdout)
    assert set(generated) == {"prob"}
    assert 0.0 <= generated["prob"] <= 1.0
    predicted = json.loads(compose.run(PREDICT).stdout)
    assert set(predicted) == {"sentiment", "confidence", "probabilities"}
    assert predicted["sentiment"] in {"negative", "neutral", "positive"}
    assert set(predicted["probabilities"]) == {"negative", "neutral", "positive"}
    assert predicted["confidence"] == max(predicted["probabilities"].values())


def test_every_container_is_unprivileged(compose: Compose) -> None:
    for service, uid in (("torchserve", "10001"), ("gateway", "10002")):
        (container,) = compose.container_ids(service)
        config = inspect(container)["HostConfig"]
        assert config["ReadonlyRootfs"] is True  # type: ignore[index]
        assert config["CapDrop"] == ["ALL"]  # type: ignore[index]
        assert "no-new-privileges:true" in config["SecurityOpt"]  # type: ignore[index]
        assert config["Memory"] > 0
        assert config["PidsLimit"] > 0
        assert compose.run(f"docker compose exec {service} id -u").stdout.strip() == uid
        wrote = compose.run(f"docker compose exec {service} touch /app/x", check=False)
        assert wrote.returncode != 0
        assert "Read-only file system" in wrote.stderr


def test_gateway_holds_the_inference_key_and_nothing_else(compose: Compose) -> None:
    listing = compose.run("docker compose exec gateway sh -c 'ls /run/keys/*/ && ls -d /run/ts'", check=False)
    assert "inference_key.json" in listing.stdout
    assert "key_file.json" not in listing.stdout
    assert listing.returncode != 0  # no /run/ts: TorchServe's own key file never reaches this container
    store = compose.run(
        "docker compose exec gateway sh -c 'ls /app/model_store && touch /app/model_store/x'", check=False
    )
    assert ".mar" in store.stdout  # the store is readable (canary.json, GET /models) ...
    assert store.returncode != 0  # ... and read only
    probe = (
        "import glob, json, urllib.request, urllib.error\n"
        "keys = json.load(open(glob.glob('/run/keys/*/inference_key.json')[0]))\n"
        "print(sorted(keys))\n"
        "request = urllib.request.Request('http://torchserve:8081/models', "
        "headers={'Authorization': 'Bearer ' + keys['inference']['key']})\n"
        "try:\n    urllib.request.urlopen(request, timeout=5)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    out = compose.run(f'docker compose exec gateway python -c "{probe}"').stdout.split("\n")
    assert out[0] == "['inference']"
    assert out[1] == "400"  # TorchServe's answer to a key that is not the management key


def test_a_rotated_inference_key_reaches_the_gateway(compose: Compose) -> None:
    """Rotated inside TorchServe's container (with the API key, which only exists there): the launcher publishes the
    new key and the gateway, rejected once, re-reads it; no request fails."""
    rotate = (
        "import glob, json, urllib.request\n"
        "keys = json.load(open(glob.glob('/run/ts/*/torchserve/key_file.json')[0]))\n"
        "request = urllib.request.Request('http://127.0.0.1:8081/token?type=inference', method='POST', "
        "headers={'Authorization': 'Bearer ' + keys['API']['key']})\n"
        "urllib.request.urlopen(request, timeout=10)\n"
        "print(keys['inference']['key'])\n"
    )
    old = compose.run(f'docker compose exec torchserve python -c "{rotate}"').stdout.strip()
    assert [generate(compose, f"rotated {i}").status_code for i in range(20)] == [200] * 20
    published = compose.run("docker compose exec gateway sh -c 'cat /run/keys/*/inference_key.json'").stdout
    assert json.loads(published)["inference"]["key"] != old


def test_torchserve_user_can_write_only_the_store_and_its_own_state(compose: Compose) -> None:
    """What TorchServe 0.12 could be made to register as a directory (with the management key, which exists only
    inside this container): the directories its user can write. Exactly these, nothing else."""
    walk = (
        "import os\n"
        "for root, dirs, _ in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ('/proc', '/sys', '/dev')]\n"
        "    if os.access(root, os.W_OK):\n        print(root)\n        dirs.clear()\n"
    )
    writable = set(compose.run(f'docker compose exec torchserve python -c "{walk}"').stdout.split())
    assert writable == {"/app/model_store", "/tmp", "/run/ts", "/run/keys"}


def test_publish_through_compose_refuses_an_unwritable_store_before_touching_torchserve(compose: Compose) -> None:
    store = compose.store
    assert compose.spare is not None
    shutil.copy(compose.spare, store / "cola-2.0.mar")  # in place of `docker compose run --rm train --task cola`
    compose.chown_store(APP_UID)
    compose.run(REGISTER)
    compose.chown_store(0)  # the store belongs to the host user, as a bind mount usually does
    refused = compose.run(SET_DEFAULT, check=False)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, refused.stderr
    assert errors[0].startswith("publish: error: cannot write /app/model_store/defaults.json")
    assert not (store / "defaults.json").exists()
    assert served_versions(compose, 10) == {"1.0"}  # TorchServe's default did not move

    compose.chown_store(APP_UID)
    compose.run(SET_DEFAULT)
    assert json.loads((store / "defaults.json").read_text())["cola"]["default"] == "2.0"
    assert served_versions(compose, 10) == {"2.0"}


def test_two_replicas_both_answer_with_the_published_default(compose: Compose) -> None:
    started = time.monotonic()
    compose.run(SCALE, timeout=600)
    wait_for(lambda: ready_replicas(compose) == 2, timeout=60, what="2 ready replicas behind the gateway")
    TIMINGS["scale to 2 (healthy, discovered)"] = time.monotonic() - started
    before = [_requests_served(compose, i) for i in (1, 2)]
    assert served_versions(compose, 40) == {"2.0"}  # the new replica applied defaults.json from the store
    after = [_requests_served(compose, i) for i in (1, 2)]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def _requests_served(compose: Compose, index: int) -> float:
    metrics = compose.run(
        f"docker compose exec --index {index} torchserve python -c "
        "\"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8082/metrics').read().decode())\""
    ).stdout
    return sum(float(m) for m in re.findall(r"^ts_inference_requests_total\{[^}]*\} (\S+)$", metrics, re.M))


def test_gateway_keeps_answering_when_one_torchserve_is_killed(compose: Compose) -> None:
    """SIGKILL one replica under steady traffic: every request sent after it died is answered 200 (one in flight on
    it at that moment may fail: docs/deployment.md)."""
    first, second = compose.container_ids("torchserve")
    results: list[tuple[bool, int]] = []  # (sent after the kill, status)
    killed, stop = threading.Event(), threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            after = killed.is_set()
            try:
                status = generate(compose, f"traffic {len(results)}").status_code
            except httpx.HTTPError:
                status = 0
            results.append((after, status))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(results) >= 10, timeout=60, what="10 requests before the kill")
        compose.run(f"docker kill {second}")
        killed.set()
        wait_for(lambda: sum(after for after, _ in results) >= 40, timeout=120, what="40 requests after the kill")
    finally:
        stop.set()
        sender.join()
    after_kill = [status for after, status in results if after]
    assert after_kill == [200] * len(after_kill)
    assert inspect(first)["State"]["Running"] is True  # type: ignore[index]


def test_down_leaves_nothing_running_or_listening(compose: Compose) -> None:
    compose.run(DOWN, timeout=300)
    left = compose.run(f"docker ps -aq --filter label=com.docker.compose.project={PROJECT}").stdout.split()
    assert left == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(compose.url("/ready"), timeout=5)
    print(f"\n[compose tier] timings: {json.dumps({k: round(v) for k, v in TIMINGS.items()})}")


def test_first_start_on_an_unwritable_empty_store_says_what_to_do(compose: Compose, tmp_path: Path) -> None:
    empty = tmp_path / "store"
    empty.mkdir()  # owned by root: the images' user cannot write it
    env = dict(compose.env, MODEL_STORE_DIR=str(empty))
    refused = Compose(env=env, store=empty, published=compose.port).run("docker compose run --rm models", check=False)
    assert refused.returncode != 0
    assert "[stack] error: " in refused.stderr
    assert "not writable by uid 10001" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
