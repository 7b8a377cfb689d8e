"""Several TorchServe replicas behind one gateway: settings, discovery with an injected resolver, round-robin with
down marks, failover only for requests that never reached a replica, and readiness counted over replicas."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app, http_client
from gateway.replicas import Rotation, Upstream, at_addresses, discover, given, resolve_all
from gateway.settings import ReplicaSettings, Settings, SettingsError, load_settings
from gateway.torchserve import TorchServeClient
from tests.gateway.conftest import FakeTorchServe, sample
from torchserve_protocol.layout import REPO

ADDRESSES = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
ONE_REPLICA = '[{"inference_url": "http://a:1", "management_url": "http://a:2", "key_file": "k"}]'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the rotation ------------------------------------------------------------------------------------------------


def test_round_robin_starts_one_further_along_per_request() -> None:
    rotation: Rotation[str] = Rotation(down_s=5)
    rotation.replace(["a", "b", "c"])

    firsts = [rotation.order()[0] for _ in range(6)]

    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert rotation.order() == ["a", "b", "c"]  # every member is in each order: the fallbacks after the first


def test_a_down_member_is_skipped_until_its_mark_expires() -> None:
    clock = Clock()
    rotation: Rotation[str] = Rotation(down_s=5, clock=clock)
    rotation.replace(["a", "b", "c"])

    rotation.mark_down("b")
    during = [rotation.order() for _ in range(4)]
    clock.now += 4.9
    still = rotation.is_down("b")
    clock.now += 0.2
    after = {rotation.order()[0] for _ in range(3)}

    assert all("b" not in order and len(order) == 2 for order in during)
    assert [order[0] for order in during] == ["a", "c", "a", "c"]  # the up members share the load evenly
    assert still
    assert after == {"a", "b", "c"}


def test_when_every_member_is_down_all_are_tried_soonest_back_first() -> None:
    clock = Clock()
    rotation: Rotation[str] = Rotation(down_s=5, clock=clock)
    rotation.replace(["a", "b"])
    rotation.mark_down("b")
    clock.now += 1
    rotation.mark_down("a")

    assert rotation.up() == []
    assert rotation.order() == ["b", "a"]


def test_replacing_members_keeps_the_marks_of_those_that_stay() -> None:
    rotation: Rotation[str] = Rotation(down_s=5)
    rotation.replace(["a", "b"])
    rotation.mark_down("a")
    rotation.mark_down("b")

    rotation.replace(["b", "c"])

    assert rotation.members == ["b", "c"]
    assert rotation.is_down("b")
    assert not rotation.is_down("c")


# --- settings and discovery --------------------------------------------------------------------------------------


def discovering(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "inference_url": "http://torchserve:8080",
        "management_url": "http://torchserve:8081",
        "key_file": str(tmp_path / "{host}" / "key_file.json"),
        "discover_replicas": True,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def test_one_replica_by_default() -> None:
    settings = Settings()

    assert given(settings) == [Upstream("http://127.0.0.1:8080", "http://127.0.0.1:8081", settings.key_file)]


def test_replicas_from_gateway_replicas_json(monkeypatch: pytest.MonkeyPatch) -> None:
    replicas = [
        {"inference_url": f"http://127.0.0.1:{p}", "management_url": f"http://127.0.0.1:{p + 1}", "key_file": f"r/{p}"}
        for p in (9080, 9180)
    ]
    monkeypatch.setenv("GATEWAY_REPLICAS", json.dumps(replicas))

    upstreams = given(load_settings())

    assert [u.inference_base for u in upstreams] == ["http://127.0.0.1:9080", "http://127.0.0.1:9180"]
    assert [u.management_base for u in upstreams] == ["http://127.0.0.1:9081", "http://127.0.0.1:9181"]
    assert [u.key_file for u in upstreams] == [REPO / "r" / "9080", REPO / "r" / "9180"]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GATEWAY_REPLICAS": "[]"}, "at least 1 item"),
        ({"GATEWAY_REPLICAS": '[{"inference_url": "http://a:1"}]'}, "Field required"),
        ({"GATEWAY_REPLICAS": "not json"}, "GATEWAY_REPLICAS: Input should be a valid list"),
        ({"GATEWAY_DISCOVER_REPLICAS": "true"}, "containing {host}"),
        ({"GATEWAY_KEY_FILE": "/run/ts/{host}/k.json"}, "discover_replicas is off"),
        ({"GATEWAY_REPLICA_REFRESH_S": "0"}, "GATEWAY_REPLICA_REFRESH_S"),
        (
            {
                "GATEWAY_DISCOVER_REPLICAS": "true",
                "GATEWAY_KEY_FILE": "/run/{host}.json",
                "GATEWAY_REPLICAS": ONE_REPLICA,
            },
            "not both",
        ),
    ],
)
def test_bad_replica_settings_fail_at_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert fragment in str(raised.value)


def test_discovery_builds_one_replica_per_address(tmp_path: Path) -> None:
    settings = discovering(tmp_path)

    async def resolve(host: str) -> list[str]:
        assert host == "torchserve"
        return ["10.0.0.2", "fd00::3"]

    upstreams = asyncio.run(discover(settings, resolve))

    assert upstreams == [
        Upstream("http://10.0.0.2:8080", "http://10.0.0.2:8081", tmp_path / "10.0.0.2" / "key_file.json"),
        Upstream("http://[fd00::3]:8080", "http://[fd00::3]:8081", tmp_path / "fd00::3" / "key_file.json"),
    ]


def test_the_real_resolver_answers_every_address_of_a_name() -> None:
    addresses = asyncio.run(resolve_all("localhost"))

    assert "127.0.0.1" in addresses or "::1" in addresses
    assert addresses == sorted(set(addresses))


def test_a_failed_discovery_keeps_the_replicas_found_last(tmp_path: Path) -> None:
    answers: list[list[str] | OSError] = [ADDRESSES[:2], OSError("Temporary failure in name resolution"), []]
    answers.append(ADDRESSES[1:])

    async def resolve(host: str) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    async def scenario() -> list[list[str]]:
        settings = discovering(tmp_path)
        seen = []
        async with http_client(settings) as http:
            client = TorchServeClient(settings, http, resolve=resolve)
            assert client.rotation.members == []
            for _ in range(4):
                await client.refresh()
                seen.append([urlhost(r.upstream.inference_base) for r in client.rotation.members])
        return seen

    assert asyncio.run(scenario()) == [ADDRESSES[:2], ADDRESSES[:2], ADDRESSES[:2], ADDRESSES[1:]]


def urlhost(url: str) -> str:
    return httpx.URL(url).host


def test_replicas_that_stay_keep_their_client_and_cached_keys(tmp_path: Path) -> None:
    settings = discovering(tmp_path)

    async def scenario() -> tuple[object, object]:
        async with http_client(settings) as http:
            client = TorchServeClient(settings, http, resolve=lambda host: _const(ADDRESSES[:2]))
            await client.refresh()
            before = client.rotation.members[1]
            client._use(at_addresses(settings, ADDRESSES[1:]))
            return before, client.rotation.members[0]

    before, after = asyncio.run(scenario())

    assert before is after


async def _const(addresses: list[str]) -> list[str]:
    return addresses


# --- the gateway over several fake replicas ----------------------------------------------------------------------


class Replicas:
    """Fake TorchServe replicas by address, each with its own key file and keys; ``broken`` raises per address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_host: dict[str, FakeTorchServe] = {}
        self.broken: dict[str, type[httpx.TransportError]] = {}
        for address in ADDRESSES:
            (root / address).mkdir(parents=True)
            self.by_host[address] = FakeTorchServe(
                key_file=root / address / "key_file.json", inference_key=f"inf-{address}", management_key=f"m-{address}"
            )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.broken:
            raise self.broken[host]("simulated", request=request)
        return self.by_host[host](request)

    def served(self) -> Counter[str]:
        return Counter({host: len(fake.predictions) for host, fake in self.by_host.items()})


@pytest.fixture
def replicas(tmp_path: Path) -> Replicas:
    return Replicas(tmp_path / "run")


@pytest.fixture
def gateway(replicas: Replicas) -> Iterator[TestClient]:
    settings = discovering(replicas.root, retry_after_s=9, key_refresh_wait_s=0.2)

    async def resolve(host: str) -> list[str]:
        return list(ADDRESSES)

    app = create_app(settings, transport=httpx.MockTransport(replicas), resolve=resolve)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_requests_are_spread_round_robin_with_each_replicas_own_key(gateway: TestClient, replicas: Replicas) -> None:
    statuses = [gateway.post("/generate", json={"passage": "x"}).status_code for _ in range(9)]

    assert statuses == [200] * 9
    assert replicas.served() == Counter({address: 3 for address in ADDRESSES})
    for address, fake in replicas.by_host.items():
        assert {r.headers["Authorization"] for r in fake.predictions} == {f"Bearer inf-{address}"}


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout])
def test_a_replica_that_refuses_is_skipped_and_the_request_goes_to_the_next(
    gateway: TestClient, replicas: Replicas, failure: type[httpx.TransportError]
) -> None:
    replicas.broken[ADDRESSES[0]] = failure

    statuses = [gateway.post("/predict", json={"text": "x"}).status_code for _ in range(8)]

    assert statuses == [200] * 8
    assert replicas.served() == Counter({ADDRESSES[1]: 4, ADDRESSES[2]: 4})  # down after its first refusal


def test_a_key_file_not_written_yet_sends_the_request_to_the_next_replica(
    gateway: TestClient, replicas: Replicas
) -> None:
    replicas.by_host[ADDRESSES[0]].key_file.unlink()  # a replica still starting

    statuses = [gateway.post("/generate", json={"passage": "x"}).status_code for _ in range(3)]

    assert statuses == [200] * 3
    assert replicas.served()[ADDRESSES[0]] == 0


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.RemoteProtocolError])
def test_a_request_cut_mid_answer_is_sent_once_more_to_the_next_replica(
    gateway: TestClient, replicas: Replicas, failure: type[httpx.TransportError]
) -> None:
    replicas.broken[ADDRESSES[0]] = failure

    first = gateway.post("/generate", json={"passage": "x"})

    assert first.status_code == 200  # inference is idempotent: the lost attempt is repeated, once
    assert replicas.served() == Counter({ADDRESSES[1]: 1})
    assert sample(gateway.get("/metrics").text, "gateway_upstream_retries_total", reason="connection_broken") == 1


def test_a_read_timeout_is_not_repeated_on_another_replica(gateway: TestClient, replicas: Replicas) -> None:
    replicas.broken[ADDRESSES[0]] = httpx.ReadTimeout

    first = gateway.post("/generate", json={"passage": "x"})

    assert first.status_code == 504  # the deadline is spent: nothing is sent again
    assert replicas.served() == Counter()


def test_every_replica_down_is_503_with_retry_after(gateway: TestClient, replicas: Replicas) -> None:
    for address in ADDRESSES:
        replicas.broken[address] = httpx.ConnectError

    responses = [gateway.post("/generate", json={"passage": "x"}) for _ in range(2)]

    for response in responses:
        assert (response.status_code, response.json()["type"]) == (503, "unavailable")
        assert response.headers["Retry-After"] == "9"


def test_ready_counts_replicas_and_names_no_address(gateway: TestClient, replicas: Replicas) -> None:
    all_up = gateway.get("/ready")
    replicas.broken[ADDRESSES[0]] = httpx.ConnectError
    replicas.by_host[ADDRESSES[1]].ready["cola"] = False
    one_up = gateway.get("/ready")
    replicas.broken[ADDRESSES[2]] = httpx.ConnectError
    none_up = gateway.get("/ready")

    assert (all_up.status_code, all_up.json()["replicas"]) == (200, {"ready": 3, "known": 3})
    assert (one_up.status_code, one_up.json()["replicas"]) == (200, {"ready": 1, "known": 3})
    assert one_up.json()["models"] == {"cola": "READY", "sentiment": "READY"}
    assert (none_up.status_code, none_up.json()["replicas"]) == (503, {"ready": 0, "known": 3})
    assert none_up.headers["Retry-After"] == "9"
    for response in (all_up, one_up, none_up):
        assert not any(a in response.text for a in ADDRESSES)
        assert str(replicas.root) not in response.text


def test_ready_with_one_explicit_replica_counts_it_and_the_default_body_has_no_count(
    upstream: FakeTorchServe, settings: Settings
) -> None:
    replica = {"inference_url": "http://127.0.0.1:8080", "management_url": "http://127.0.0.1:8081", "key_file": "x"}
    one = ReplicaSettings.model_validate(replica).model_copy(update={"key_file": upstream.key_file})
    explicit = settings.model_copy(update={"replicas": [one]})
    bodies = []
    for each in (explicit, settings):
        with TestClient(create_app(each, transport=httpx.MockTransport(upstream))) as client:
            bodies.append(client.get("/ready").json())

    assert bodies[0]["replicas"] == {"ready": 1, "known": 1}
    assert "replicas" not in bodies[1]  # the single-upstream default answers exactly as before


def test_no_replica_discovered_yet_is_503_and_not_ready(tmp_path: Path) -> None:
    async def nothing(host: str) -> list[str]:
        raise OSError("no such host")

    unreachable: Callable[[httpx.Request], httpx.Response] = FakeTorchServe(key_file=tmp_path / "k.json")
    app = create_app(discovering(tmp_path), transport=httpx.MockTransport(unreachable), resolve=nothing)
    with TestClient(app, raise_server_exceptions=False) as client:
        predict = client.post("/predict", json={"text": "x"})
        ready = client.get("/ready")

    assert (predict.status_code, predict.json()["type"]) == (503, "unavailable")
    assert ready.status_code == 503
    assert ready.json()["replicas"] == {"ready": 0, "known": 0}
