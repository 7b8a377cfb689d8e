"""docker compose for real: up on an empty store (the `models` service trains the defaults), the README's curls,
least privilege, a version trained with `docker compose run --rm train` (inert until registered), published with one
command through any replica (a store that refuses the write changes nothing), two TorchServe replicas that follow
the store's served.json, a publish under load that moves both, one replica killed and one added back, down.

The tests run in file order on one stack (tests/compose/conftest.py), each a step of how the product is used.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.compose.commands import (
    DOWN,
    GENERATE,
    LIST,
    PREDICT,
    PUBLISH,
    REGISTER,
    ROLLBACK,
    SCALE,
    SET_DEFAULT,
    TRAIN,
    UP,
)
from tests.compose.conftest import APP_UID, FEW_ROWS, PROJECT, Compose, ready_replicas, wait_for
from torchserve_protocol.layout import REPO

pytestmark = pytest.mark.compose

TIMINGS: dict[str, float] = {}
PUBLISH_S = 30  # one publish under load returns, every replica moved, within this (docs/deployment.md)
SERVES = re.compile(r"^replica (\S+): serves the state$", re.M)


def generate(compose: Compose, passage: str = "I are a boy", **headers: str) -> httpx.Response:
    return httpx.post(compose.url("/generate"), json={"passage": passage}, headers=headers, timeout=30)


def served_versions(compose: Compose, n: int) -> set[str]:
    return {generate(compose, f"sentence {i}").headers["X-Model-Version"] for i in range(n)}


def inspect(container: str) -> dict[str, object]:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]


def served_state(compose: Compose) -> dict[str, dict[str, object]]:
    """The store's served.json, read on the host: ``{"cola": {"default": ..., "versions": {...}}, ...}``."""
    return json.loads((compose.store / "served.json").read_text())["models"]


def replicas_serving(compose: Compose) -> list[str]:
    """The replicas `publish list` reports as serving the state exactly (one line each)."""
    return SERVES.findall(compose.run(LIST, check=False).stdout)


def seconds_ran(container: str) -> float:
    """How long a container that has exited ran (the engine's own start and finish times, to the microsecond)."""
    state = inspect(container)["State"]
    started, finished = (datetime.fromisoformat(state[k][:26] + "+00:00") for k in ("StartedAt", "FinishedAt"))  # type: ignore[index]
    return (finished - started).total_seconds()


def test_up_on_an_empty_store_trains_the_defaults_and_waits_until_healthy(compose: Compose) -> None:
    assert list(compose.store.iterdir()) == []
    started = time.monotonic()
    compose.run(UP, timeout=2400)
    TIMINGS["up on an empty store (build, train both, start, healthy)"] = time.monotonic() - started
    for service in ("torchserve", "gateway"):
        (container,) = compose.container_ids(service)
        assert inspect(container)["State"]["Health"]["Status"] == "healthy"  # type: ignore[index]
    (models,) = compose.run("docker compose ps -a -q models").stdout.split()
    assert inspect(models)["State"]["ExitCode"] == 0  # type: ignore[index]
    TIMINGS["models: training cola and sentiment"] = seconds_ran(models)
    log = compose.run(f"docker logs {models}").stdout
    assert f"with TRAIN_ARGS={FEW_ROWS}" in log  # the setting reached the launcher's training runs
    assert {p.name for p in compose.store.glob("*.mar")} == {"cola-1.0.mar", "sentiment-1.0.mar"}
    state = served_state(compose)
    assert {name: model["default"] for name, model in state.items()} == {"cola": "1.0", "sentiment": "1.0"}
    up, models_s = (
        TIMINGS["up on an empty store (build, train both, start, healthy)"],
        TIMINGS["models: training cola and sentiment"],
    )
    print(
        f"\n[compose tier] `{UP}` on an empty store: {up:.0f}s, of which the models service (training) {models_s:.0f}s"
    )


def test_readme_curls_answer_the_legacy_contracts(compose: Compose) -> None:
    generated = json.loads(compose.run(GENERATE).stdout)
    assert set(generated) == {"prob"}
    assert 0.0 <= generated["prob"] <= 1.0
    predicted = json.loads(compose.run(PREDICT).stdout)
    assert set(predicted) == {"sentiment", "confidence", "probabilities"}
    assert predicted["sentiment"] in {"negative", "neutral", "positive"}
    assert set(predicted["probabilities"]) == {"negative", "neutral", "positive"}
    assert predicted["confidence"] == max(predicted["probabilities"].values())


# The hostile-client tests that hold through docker-proxy: every host client reaches the edge from ONE address (the
# proxy's), so the per-address ones need clients in containers of their own on the compose network: issue 25's 1,000
# half heads runs so below; tests/edge's 256 connections and 429 past 64 requests are not run here.
HOSTILE_THROUGH_THE_PROXY = [
    "tests/edge/test_edge.py::test_a_bad_head_gets_the_gateways_json_refusal_and_the_connection_closes",
    "tests/edge/test_edge.py::test_101_header_lines_are_refused_by_the_gateway_behind_the_edge",
    "tests/edge/test_edge.py::test_a_request_id_passes_through_and_a_body_over_the_limit_gets_413",
    "tests/edge/test_edge.py::test_a_header_flood_is_cut_within_a_few_kib_and_health_stays_fast",
    "tests/edge/test_edge.py::test_slow_heads_stalled_bodies_and_idle_connections_are_closed_at_their_timeouts",
    "tests/edge/test_edge.py::test_an_answer_given_while_the_client_sends_comes_whole_then_a_clean_end",
    "tests/edge/test_edge.py::test_a_client_that_keeps_sending_after_its_answer_is_cut_off_at_the_lingering_time",
    "tests/reliability/test_limits.py::test_many_idle_connections_do_not_starve_a_real_request",
]


def test_hostile_clients_against_the_compose_edge(compose: Compose) -> None:
    """The local tier's hostile-client tests, pointed at the published edge (``EDGE_URL``) instead of a local one."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-m", "integration",
         "--timeout=300", *HOSTILE_THROUGH_THE_PROXY],
        cwd=REPO, env={**compose.env, "EDGE_URL": compose.url("")}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(f"\n[compose tier] hostile clients through the edge: {done.stdout.strip().splitlines()[-1:]}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.99 * len(values)) - 1)]


def test_one_address_holding_1000_half_heads_and_another_flooding_do_not_slow_a_third(compose: Compose) -> None:
    """Issue 25's test with real distinct addresses: one container on the compose network keeps 1,000 connections
    with a partial head each, another sends header floods from 4 connections (tests/compose/hostile.py, in the
    gateway image); the host, a third address (docker-proxy's), asks /health and POST /generate 100 times each:
    every answer 200, p99 under 100 ms."""
    edge = compose.container_ids("edge")[0]
    network = next(iter(inspect(edge)["NetworkSettings"]["Networks"]))  # type: ignore[index]
    script = REPO / "tests" / "compose" / "hostile.py"
    started: list[str] = []
    try:
        for role in ("half-heads", "floods"):
            name = f"{PROJECT}-hostile-{role}"
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            subprocess.run(
                ["docker", "run", "-d", "--name", name, "--network", network, "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges:true", "--user", "10002:10002", "--memory", "128m",
                 "-v", f"{script}:/hostile.py:ro", "bert-serving/gateway:local", "python", "/hostile.py", role,
                 "edge", "8080"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            started.append(name)
            wait_for(lambda n=name: "ready" in logs(n), timeout=60, what=f"{role} in place")
        with httpx.Client(base_url=compose.url(""), timeout=10) as client:
            client.get("/health")  # the keep-alive connection exists
            health, generated = [], []
            for _ in range(100):
                began = time.perf_counter()
                assert client.get("/health").status_code == 200
                health.append((time.perf_counter() - began) * 1000)
            for i in range(100):
                began = time.perf_counter()
                response = client.post("/generate", json={"passage": f"I are a boy {i}"})
                assert response.status_code == 200, response.text
                generated.append((time.perf_counter() - began) * 1000)
        attack = {name: logs(name).strip().splitlines()[-1:] for name in started}
    finally:
        for name in started:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    print(f"\n[compose tier] 1,000 half heads + floods from two containers: {attack}; "
          f"/health p99 {p99(health):.1f} ms, /generate p99 {p99(generated):.1f} ms")  # fmt: skip
    assert "431" in attack[f"{PROJECT}-hostile-floods"][0], attack
    assert p99(health) < 100, sorted(health)[-5:]
    assert p99(generated) < 100, sorted(generated)[-5:]


def logs(container: str) -> str:
    return subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=False).stdout


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
    assert "served.json" in store.stdout  # the store is readable (the canary and shadow shares, GET /models) ...
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


def test_a_trained_version_is_inert_until_registered(compose: Compose) -> None:
    """`docker compose run --rm train` packages cola-2.0.mar into the store; neither a restart nor a new look at the
    store serves it: it is not in served.json."""
    started = time.monotonic()
    compose.run(f"{TRAIN} {FEW_ROWS}", timeout=1200)
    TIMINGS["train cola 2.0 (docker compose run --rm train)"] = time.monotonic() - started
    assert (compose.store / "cola-2.0.mar").is_file()
    compose.run("docker compose restart torchserve", timeout=300)
    wait_for(lambda: len(replicas_serving(compose)) == 1, timeout=300, what="the restarted replica serving the state")
    wait_for(lambda: ready_replicas(compose) == 1, timeout=120, what="the gateway's replica ready again")
    listed = compose.run(LIST).stdout
    assert re.search(r"^cola +1\.0 .* default", listed, re.M), listed
    assert not re.search(r"^cola +2\.0 ", listed, re.M), listed
    assert served_versions(compose, 10) == {"1.0"}
    pinned = generate(compose, **{"X-Model-Version": "2.0"})
    assert pinned.status_code == 404, pinned.text
    assert "2.0" not in served_state(compose)["cola"]["versions"]  # type: ignore[operator]


def test_publish_through_compose_refuses_an_unwritable_store_before_touching_torchserve(compose: Compose) -> None:
    """One `docker compose exec torchserve ...` per publish. A store the CLI cannot write refuses with one line and
    nothing moves; writable again, the gate measures 2.0 (its real metrics.json, its served answers) and lets it in."""
    registered = compose.run(REGISTER)
    assert "registered cola 2.0: READY on 1 replica(s) (default stays 1.0" in registered.stdout, registered.stdout
    before = (compose.store / "served.json").read_bytes()
    compose.chown_store(0)  # the store belongs to the host user, as a bind mount usually does
    try:
        refused = compose.run(SET_DEFAULT, check=False)
    finally:
        compose.chown_store(APP_UID)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, refused.stderr
    assert errors[0].startswith("publish: error: cannot lock /app/model_store/served.json (Permission denied"), errors
    assert (compose.store / "served.json").read_bytes() == before
    assert served_versions(compose, 10) == {"1.0"}  # TorchServe's default did not move

    switched = compose.run(SET_DEFAULT)
    gate = next(line for line in switched.stdout.splitlines() if line.startswith("gate: "))
    print(f"\n[compose tier] {gate}")
    assert re.fullmatch(r"gate: cola 2\.0 mcc recorded -?[\d.]+, served -?[\d.]+", gate), gate
    assert "passed only by --force" not in switched.stderr
    assert "cola: default 1.0 -> 2.0 on 1 replica(s)" in switched.stdout
    assert served_state(compose)["cola"]["default"] == "2.0"
    assert served_versions(compose, 10) == {"2.0"}


def test_two_replicas_both_serve_the_state(compose: Compose) -> None:
    """The second replica starts after the publish: it applies served.json (both cola versions, 2.0 the default)
    with no publish run in it; `publish list` in either replica shows both serving the state."""
    started = time.monotonic()
    compose.run(SCALE, timeout=600)
    wait_for(lambda: ready_replicas(compose) == 2, timeout=120, what="2 ready replicas behind the gateway")
    TIMINGS["scale to 2 (healthy, discovered)"] = time.monotonic() - started
    wait_for(lambda: len(replicas_serving(compose)) == 2, timeout=60, what="2 replicas serving the state")
    second = compose.run(LIST.replace("exec torchserve", "exec --index 2 torchserve")).stdout
    assert len(SERVES.findall(second)) == 2, second
    before = [_requests_served(compose, i) for i in (1, 2)]
    assert served_versions(compose, 40) == {"2.0"}
    after = [_requests_served(compose, i) for i in (1, 2)]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def _requests_served(compose: Compose, index: int) -> float:
    metrics = compose.run(
        f"docker compose exec --index {index} torchserve python -c "
        "\"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8082/metrics').read().decode())\""
    ).stdout
    return sum(float(m) for m in re.findall(r"^ts_inference_requests_total\{[^}]*\} (\S+)$", metrics, re.M))


@dataclass
class Traffic:
    """Client threads posting unpinned /generate requests through the gateway until stopped; each answer is kept
    with the moment its request was sent."""

    compose: Compose
    threads: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (sent, status, X-Model-Version)
    stop: threading.Event = field(default_factory=threading.Event)
    running: list[threading.Thread] = field(default_factory=list)

    def _send(self, n: int) -> None:
        with httpx.Client(base_url=self.compose.url(""), timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                sent = time.monotonic()
                try:
                    answer = client.post("/generate", json={"passage": f"load {n} {i}"})
                    status, version = answer.status_code, answer.headers.get("X-Model-Version", "")
                except httpx.HTTPError:
                    status, version = 0, ""
                self.answers.append((sent, status, version))

    def __enter__(self) -> Traffic:
        for n in range(self.threads):
            thread = threading.Thread(target=self._send, args=(n,), daemon=True)
            thread.start()
            self.running.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.running:
            thread.join(timeout=60)

    def failed(self) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[1] != 200]

    def versions_sent_after(self, moment: float) -> set[str]:
        return {version for sent, _, version in list(self.answers) if sent > moment}


def test_one_publish_under_load_moves_both_replicas(compose: Compose) -> None:
    """Under client traffic, one `rollback` and one `set-default` (gated), each run once in one replica: each
    returns when both replicas serve it, within PUBLISH_S, and every request sent after it returned gets the new
    default. No request fails."""
    with Traffic(compose) as traffic:
        wait_for(lambda: len(traffic.answers) >= 20, timeout=60, what="20 answers before the publish")
        for command, version in ((ROLLBACK, "1.0"), (SET_DEFAULT, "2.0")):
            started = time.monotonic()
            done = compose.run(command, timeout=300)
            returned = time.monotonic()
            TIMINGS[f"{command.removeprefix(PUBLISH)} under load, 2 replicas"] = returned - started
            assert returned - started < PUBLISH_S, (command, returned - started)
            assert "on 2 replica(s)" in done.stdout, done.stdout
            wait_for(lambda r=returned: sum(s > r for s, _, _ in list(traffic.answers)) >= 20, timeout=60,
                     what=f"20 answers after {command}")  # fmt: skip
            assert traffic.versions_sent_after(returned) == {version}, (command, traffic.versions_sent_after(returned))
            assert len(replicas_serving(compose)) == 2
    assert traffic.failed() == [], traffic.failed()[:5]
    print(
        f"\n[compose tier] {len(traffic.answers)} requests under load, 0 failed; publish times: "
        f"{ {k: round(v, 1) for k, v in TIMINGS.items() if 'under load' in k} }"
    )


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


def test_a_replica_added_after_the_kill_converges_by_itself(compose: Compose) -> None:
    """`up --scale torchserve=2` after the kill starts a TorchServe from nothing (its tmpfs is empty): it applies
    served.json as it is now (cola 1.0 and 2.0, 2.0 the default) with no publish run anywhere."""
    compose.run(SCALE, timeout=600)
    wait_for(lambda: len(replicas_serving(compose)) == 2, timeout=300, what="2 replicas serving the state again")
    wait_for(lambda: ready_replicas(compose) == 2, timeout=120, what="2 ready replicas behind the gateway")
    assert served_versions(compose, 20) == {"2.0"}


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
