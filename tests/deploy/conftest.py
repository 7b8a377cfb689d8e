"""Parsed deployment files (Dockerfile, docker-compose.yml, deploy/ manifests) for the consistency tests: no Docker
engine or cluster is needed, and nothing is started."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchserve_protocol.layout import REPO

APP = Path("/app")  # WORKDIR of the images: the repository root inside a container


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    def stage_chain(self, name: str) -> list[Stage]:
        """The stage and the stages it builds on, base first."""
        chain = [self.stages[name]]
        while chain[0].base in self.stages:
            chain.insert(0, self.stages[chain[0].base])
        return chain

    def effective(self, name: str, keyword: str) -> list[str]:
        return [arg for stage in self.stage_chain(name) for arg in stage.args(keyword)]

    def env(self, name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for arg in self.effective(name, "ENV"):
            env.update(dict(item.split("=", 1) for item in shlex.split(arg)))
        return env


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def parse_dockerfile(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, flags=re.IGNORECASE)
            assert match, rest
            current = Stage(name=match.group(2) or f"stage{len(stages)}", base=match.group(1))
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may precede FROM, not {keyword}"
            name, _, value = rest.partition("=")
            args[name] = value
        else:
            current.instructions.append((keyword, rest))
    return Dockerfile(args=args, stages=stages)


def exec_form(arg: str) -> list[str]:
    """A JSON exec-form CMD / HEALTHCHECK CMD as a list."""
    result: list[str] = json.loads(arg)
    return result


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="session")
def ts_config() -> dict[str, str]:
    return read_properties(REPO / "config.properties")
