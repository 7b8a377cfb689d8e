"""``python -m stack.sizing [--write]``: the limits of docker-compose.yml and deploy/, derived from the default models'
measured footprint, and docs/deployment.md's sizing table (section ``sizing:limits``), generated.

The figures come from the real-size tier (``make test-real-size RECORD=1`` writes docs/results/sizing.json): each
container's memory cgroup peak and TorchServe's tmpfs use, at each step of the tier, with archives of the defaults'
size. The rule for every limit: the highest measured figure must stay under :data:`FIT` of it (the tier itself fails
a run whose figures break it). Without ``--write`` this checks that the section is what the record renders and that
every limit still holds the record; ``tests/stack/test_sizing.py`` does the same in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack import doc_sections
from torchserve_protocol.layout import REPO

RECORD = REPO / "docs" / "results" / "sizing.json"
DOC = REPO / "docs" / "deployment.md"
SECTION = "sizing:limits"
COMPOSE = REPO / "docker-compose.yml"
KSERVE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
GATEWAY = REPO / "deploy" / "gateway.yaml"
FIT = 0.9  # a measured peak stays under 90% of its limit
TIME_FIT = 1 / 3  # a measured time stays under a third of its limit: start-up times vary with how busy the cores are
MiB = 1 << 20
UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def to_bytes(size: str | int) -> int:
    """``4g``, ``512m`` (compose), ``3Gi``, ``256Mi`` (Kubernetes) or a plain number of bytes."""
    text = str(size).strip().lower()
    for unit in sorted(UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    return int(text)


def seconds(duration: str | int) -> int:
    """``180s``, ``3m`` (compose durations) or a plain number of seconds."""
    text = str(duration).strip()
    return int(text[:-1]) * 60 if text.endswith("m") else int(text.removesuffix("s"))


def compose_limits() -> dict[str, int]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    limits = {f"{name} mem_limit": to_bytes(services[name]["mem_limit"]) for name in ("torchserve", "gateway")}
    for mount in services["torchserve"]["tmpfs"]:
        path, _, options = mount.partition(":")
        fields = dict(option.split("=", 1) for option in options.split(",") if "=" in option)
        limits[f"torchserve tmpfs {path}"] = to_bytes(fields["size"])
    limits["torchserve healthcheck start_period"] = seconds(services["torchserve"]["healthcheck"]["start_period"])
    return limits


def kubernetes_limits() -> dict[str, int]:
    predictor = yaml.safe_load(KSERVE.read_text())["spec"]["predictor"]["model"]
    (deployment,) = [d for d in yaml.safe_load_all(GATEWAY.read_text()) if d and d.get("kind") == "Deployment"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    gateway = next(c for c in containers if c["name"] == "gateway")
    volumes = {v["name"]: v for v in yaml.safe_load(KSERVE.read_text())["spec"]["predictor"]["volumes"]}
    return {
        "KServe predictor ts-tmp emptyDir": to_bytes(volumes["ts-tmp"]["emptyDir"]["sizeLimit"]),
        "KServe predictor memory": to_bytes(predictor["resources"]["limits"]["memory"]),
        "gateway pod memory": to_bytes(gateway["resources"]["limits"]["memory"]),
    }


@dataclass(frozen=True)
class Need:
    limit: str  # the key in compose_limits() or kubernetes_limits()
    what: str  # what the measured figure is, in words
    measured: Callable[[dict[str, Any]], tuple[int, str]]  # record -> (value, the tier's step it was seen at)
    fit: float = FIT  # the measured value stays under this share of the limit
    unit: str = "MiB"  # or "s"

    def show(self, value: float) -> str:
        return f"{value / MiB:,.0f} MiB" if self.unit == "MiB" else f"{value:,.0f} s"


def _highest(
    record: dict[str, Any], key: Callable[[str], bool], steps: Callable[[str], bool] = bool
) -> tuple[int, str]:
    seen = [(value, step) for step, figures in record["compose"].items() if steps(step)
            for name, value in figures.items() if key(name)]  # fmt: skip
    return max(seen)


def _defaults_without_tmpfs(record: dict[str, Any]) -> tuple[int, str]:
    """A replica that serves the two defaults, its unpacked archives left out (on a pod's disk, not in memory)."""
    figures = record["compose"]["the two defaults, under load"]
    return figures["torchserve1_peak"] - figures["torchserve1_run_ts_used"], "the two defaults, under load"


NEEDS = (
    Need("torchserve mem_limit", "a replica's peak: both defaults plus a second cola version's workers, under load, "
         "its tmpfs included", lambda r: _highest(r, lambda k: k.startswith("torchserve") and k.endswith("_peak"))),
    Need("torchserve tmpfs /run/ts", "TorchServe's TEMP: every registered archive unpacked",
         lambda r: _highest(r, lambda k: k.endswith("_run_ts_used"))),
    Need("gateway mem_limit", "the gateway's peak", lambda r: _highest(r, lambda k: k == "gateway_peak")),
    Need("KServe predictor memory", "a replica serving both defaults under load, without the unpacked archives "
         "(a pod's emptyDir is disk)", _defaults_without_tmpfs),
    Need("KServe predictor ts-tmp emptyDir", "TorchServe's TEMP in a pod: both defaults unpacked",
         lambda r: (r["compose"]["the two defaults, under load"]["torchserve1_run_ts_used"],
                    "the two defaults, under load")),
    Need("gateway pod memory", "the gateway's peak", lambda r: _highest(r, lambda k: k == "gateway_peak")),
    Need("torchserve healthcheck start_period", "`up` on built images until every service is healthy (TorchServe "
         "registers both defaults, then the gateway starts)", lambda r: (r["compose_up_s"], "up"), fit=TIME_FIT,
         unit="s"),
)  # fmt: skip


def limits() -> dict[str, int]:
    return compose_limits() | kubernetes_limits()


def problems(record: dict[str, Any]) -> list[str]:
    """Every limit that no longer holds its measured figure with the margin."""
    found = []
    set_to = limits()
    for need in NEEDS:
        value, step = need.measured(record)
        if value > need.fit * set_to[need.limit]:
            found.append(f"{need.limit} {need.show(set_to[need.limit])}: measured {need.show(value)} ({step}) is "
                         f"over {need.fit:.0%} of it")  # fmt: skip
    return found


def render(record: dict[str, Any]) -> str:
    set_to = limits()
    rows = [
        "| limit | what it holds | measured (the tier's step) | needs (the rule) | set to |",
        "|---|---|---|---|---|",
    ]
    for need in NEEDS:
        value, step = need.measured(record)
        rows.append(f"| {need.limit} | {need.what} | {need.show(value)} ({step}) | {need.show(value / need.fit)} "
                    f"(measured / {need.fit:.0%}) | {need.show(set_to[need.limit])} |")  # fmt: skip
    when = record.get("measured", {})
    source = (f"Source: `make test-real-size RECORD=1` at {when.get('commit', '?')} ({when.get('date', '?')}, load "
              f"average {when.get('load_average', '?')} before; docs/results/sizing.json).")  # fmt: skip
    return "\n".join([source, "", *rows]) + "\n"


def drift(record: dict[str, Any]) -> list[str]:
    found = problems(record)
    if doc_sections.section(DOC.read_text(), SECTION) != render(record):
        found.append(f"{DOC.relative_to(REPO)}: the {SECTION} section is not what {RECORD.name} renders")
    return found


def load(path: Path = RECORD) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.sizing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="re-render docs/deployment.md's sizing table")
    args = parser.parse_args(argv)
    record = load()
    if args.write:
        DOC.write_text(doc_sections.replaced(DOC.read_text(), SECTION, render(record)))
    return doc_sections.check_result(drift(record), "every limit holds the measured footprint; the table is current")


if __name__ == "__main__":
    sys.exit(main())
