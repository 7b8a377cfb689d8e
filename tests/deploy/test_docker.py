"""Dockerfile and docker-compose.yml agree with the code, the settings classes, config.properties and the Makefile."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.settings import ENV_PREFIX, HOST_PLACEHOLDER, Settings
from stack.__main__ import build_parser
from stack.run_dir import IP_PLACEHOLDER, own_address, run_dir_of
from stack.torchserve import CONFIG, REPO, Ports, TorchServe
from tests.deploy.conftest import APP, Dockerfile, exec_form

TS_CMD = ["python", "-m", "stack", "torchserve"]
GATEWAY_CMD = ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8000"]
REQUIREMENTS = ["requirements/torch.txt", "requirements/runtime.txt"]  # the order `make venv` installs them in


def dockerignore_allows(path: str) -> bool:
    """Whether the build context keeps ``path`` (.dockerignore: last matching pattern wins, ``!`` re-includes)."""
    allowed = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def copy_sources(dockerfile: Dockerfile) -> list[str]:
    sources = []
    for stage in dockerfile.stages.values():
        for arg in stage.args("COPY"):
            parts = [p for p in shlex.split(arg) if not p.startswith("--")]
            sources += [p.rstrip("/") for p in parts[:-1]]
    return sources


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    for never in ("model_store/cola-1.0.mar", "run/torchserve/key_file.json", ".venv", "artifacts/x", ".git"):
        assert not dockerignore_allows(never), never


def test_base_image_is_an_exact_python_3_11_slim_bookworm(dockerfile: Dockerfile) -> None:
    image = dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    assert dockerfile.stages["base"].base == "${PYTHON_IMAGE}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"


def pip_requirement_files(dockerfile: Dockerfile, stage: str) -> list[str]:
    runs = " && ".join(dockerfile.effective(stage, "RUN"))
    return re.findall(r"pip install -r (\S+)", runs)


@pytest.mark.parametrize("stage", ["torchserve", "gateway"])
def test_images_install_the_pinned_requirements_torch_first(dockerfile: Dockerfile, stage: str) -> None:
    assert pip_requirement_files(dockerfile, stage) == REQUIREMENTS
    for path in REQUIREMENTS:
        pins = [line for line in (REPO / path).read_text().splitlines() if line and not line.startswith("#")]
        assert pins
        assert all("==" in line for line in pins), f"unpinned line in {path}"
    runs = " ".join(dockerfile.effective(stage, "RUN"))
    assert "requirements/torch.txt --index-url https://download.pytorch.org/whl/cpu" in runs


def test_images_install_the_same_requirements_as_the_makefile(dockerfile: Dockerfile) -> None:
    makefile = REPO / "Makefile"
    if not makefile.is_file():
        pytest.skip("no Makefile yet: the Dockerfile is checked against requirements/ only")
    installed = re.findall(r"-r\s+(requirements/\S+\.txt)", makefile.read_text())
    runtime = [path for path in dict.fromkeys(installed) if path in REQUIREMENTS]
    assert runtime == REQUIREMENTS, "the Makefile installs torch.txt then runtime.txt, as the Dockerfile does"


def test_torchserve_image_has_java_17_and_both_images_run_as_the_same_non_root_user(dockerfile: Dockerfile) -> None:
    assert "openjdk-17-jre-headless" in " ".join(dockerfile.stages["torchserve"].args("RUN"))
    assert "openjdk" not in " ".join(dockerfile.effective("gateway", "RUN"))
    assert "--uid 10001" in " ".join(dockerfile.stages["base"].args("RUN"))
    for stage in ("torchserve", "gateway"):
        assert dockerfile.effective(stage, "USER")[-1] == "app"
    assert dockerfile.effective("gateway", "WORKDIR") == [str(APP)]


def test_container_commands_are_the_launcher_and_the_gateway(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    assert exec_form(dockerfile.stages["torchserve"].args("CMD")[-1]) == TS_CMD
    assert exec_form(dockerfile.stages["gateway"].args("CMD")[-1]) == GATEWAY_CMD
    assert services["torchserve"]["command"] == TS_CMD
    assert services["gateway"]["command"] == GATEWAY_CMD
    launcher = (REPO / "stack" / "__main__.py").read_text()  # the one script `make serve` runs as well
    assert '"torchserve"' in launcher
    assert "TS_HOST" in launcher


def test_only_the_gateway_publishes_a_port(services: dict[str, dict[str, Any]], ts_config: dict[str, str]) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway"}
    assert services["gateway"]["ports"] == ["127.0.0.1:8000:8000"]
    ts_ports = {str(urlsplit(ts_config[f"{api}_address"]).port) for api in ("inference", "management", "metrics")}
    assert set(services["torchserve"]["expose"]) == ts_ports
    assert ts_ports == {str(Ports().inference), str(Ports().management), str(Ports().metrics)}


def gateway_env(dockerfile: Dockerfile, services: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = {k: v for k, v in dockerfile.env("gateway").items() if k.startswith(ENV_PREFIX)}
    assert env == services["gateway"]["environment"], "the image and compose set the same gateway variables"
    return env


def test_gateway_env_names_and_urls_match_settings_and_config(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]], ts_config: dict[str, str]
) -> None:
    env = gateway_env(dockerfile, services)
    fields = {name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items()}
    assert set(fields) <= set(Settings.model_fields), "every GATEWAY_* variable is a Settings field"
    settings = Settings.model_validate(fields)
    for api, url in (("inference", settings.inference_base), ("management", settings.management_base)):
        assert urlsplit(url).hostname == "torchserve"  # the compose service name
        assert urlsplit(url).port == urlsplit(ts_config[f"{api}_address"]).port


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode)"""
    result = {}
    for volume in service.get("volumes", []):
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(ro|rw))?", volume)
        assert match, volume
        result[match.group(2)] = (match.group(1), match.group(3) or "rw")
    return result


def test_key_files_are_shared_read_only_one_run_dir_per_replica(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    ts_env = services["torchserve"]["environment"]
    run_dir_template = ts_env["RUN_DIR"]
    assert run_dir_template.endswith("/" + IP_PLACEHOLDER), "each replica has a run directory of its own"
    volume_root = run_dir_template.removesuffix("/" + IP_PLACEHOLDER)
    gw_env = gateway_env(dockerfile, services)
    assert gw_env["GATEWAY_DISCOVER_REPLICAS"] == "true"
    # The gateway's key file template names, for any replica address, the key file that replica writes.
    for address in ("172.18.0.3", "172.18.0.9"):
        run_dir = run_dir_of(run_dir_template, address=partial(str, address))
        key_file = TorchServe(model_store=Path("unused"), run_dir=run_dir).key_file
        assert gw_env["GATEWAY_KEY_FILE"].replace(HOST_PLACEHOLDER, address) == str(key_file)
    ts_mounts, gw_mounts = mounts(services["torchserve"]), mounts(services["gateway"])
    assert ts_mounts[volume_root] == ("ts-run", "rw")
    assert gw_mounts[volume_root] == ("ts-run", "ro")
    assert "ts-run" in compose["volumes"]
    assert dockerfile.env("torchserve")["RUN_DIR"] == run_dir_template
    assert dockerfile.env("torchserve")["TS_HOST"] == ts_env["TS_HOST"] == "0.0.0.0"


def test_gateway_discovers_the_replicas_of_the_torchserve_service(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    fields = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in gateway_env(dockerfile, services).items()}
    settings = Settings.model_validate(fields)
    assert settings.discover_replicas
    assert settings.replicas is None
    assert HOST_PLACEHOLDER in str(settings.key_file)
    assert "deploy" not in services["torchserve"], "no fixed replica count: docker compose up --scale torchserve=N"
    assert "container_name" not in services["torchserve"], "a fixed container name cannot be scaled"


def test_run_dir_placeholder_is_the_containers_own_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_dir_of("/run/ts/{ip}", address=lambda: "172.18.0.5") == Path("/run/ts/172.18.0.5")
    assert run_dir_of("/run/ts", address=lambda: pytest.fail("not asked without a placeholder")) == Path("/run/ts")
    monkeypatch.setenv("RUN_DIR", "/run/ts/{ip}")
    assert build_parser().parse_args(["torchserve"]).run_dir == Path("/run/ts") / own_address()
    assert build_parser().parse_args(["status", "--run-dir", "x/{ip}"]).run_dir == Path("x") / own_address()


def test_model_store_and_config_are_mounted_where_the_code_looks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("torchserve", "train"):
        service = services[name]
        store = service["environment"]["MODEL_STORE"]
        assert mounts(service)[store][0] == "./model_store"
    assert mounts(services["torchserve"])[str(APP / CONFIG.relative_to(REPO))] == ("./config.properties", "ro")
    for service in services.values():
        for source, _ in mounts(service).values():
            if source.startswith("."):
                assert (REPO / source).exists() or source == "./artifacts", source
            elif source.startswith("${"):
                default = re.fullmatch(r"\$\{\w+:-(.+)\}", source)
                assert default, source
                assert (REPO / default.group(1)).exists(), source


def test_healthchecks_use_readiness_and_the_gateway_waits_for_torchserve(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    ts_check = services["torchserve"]["healthcheck"]["test"]
    assert ts_check == ["CMD", "python", "docker/ready.py"]
    assert (REPO / "docker" / "ready.py").is_file()
    assert "/ping" not in " ".join(ts_check)
    gw_check = services["gateway"]["healthcheck"]["test"]
    assert "http://127.0.0.1:8000/ready" in gw_check[-1]
    for stage, check in (("torchserve", ts_check), ("gateway", gw_check)):
        healthcheck = dockerfile.stages[stage].args("HEALTHCHECK")[-1]
        assert exec_form(healthcheck.split(" CMD ", 1)[1]) == check[1:], "image and compose check the same way"
    assert services["gateway"]["depends_on"] == {"torchserve": {"condition": "service_healthy"}}


def load_ready_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ready", REPO / "docker" / "ready.py")
    assert spec is not None
    assert spec.loader is not None
    ready = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ready)
    return ready


def test_ready_script_reports_not_ready_without_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = load_ready_script()
    monkeypatch.setenv("MODEL_STORE", str(tmp_path))
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))
    assert ready.main() == 1
    assert "no archive" in capsys.readouterr().out


def test_ready_script_reads_the_key_file_of_its_own_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = load_ready_script()
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run" / IP_PLACEHOLDER))
    launcher = TorchServe(model_store=tmp_path, run_dir=build_parser().parse_args(["torchserve"]).run_dir)

    assert (
        ready.own_key_file() == launcher.key_file == tmp_path / "run" / own_address() / "torchserve" / "key_file.json"
    )


def test_train_service_runs_training_under_a_profile(services: dict[str, dict[str, Any]]) -> None:
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == ["python", "-m", "training.train"]
    assert train["command"][0] == "--task"
    assert train["environment"]["DATA_DIR"] in mounts(train)
    assert train["build"]["target"] == "base"
    assert (REPO / "training" / "train.py").is_file()
