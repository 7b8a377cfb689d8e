"""The gateway image installs requirements/gateway.txt only (no torch, no transformers) and copies gateway/ and
torchserve_protocol/: the gateway package must import nothing outside them, and the lock must agree with
runtime.txt, the environment the other tests run in."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from tests.imports import top_level_imports
from torchserve_protocol.layout import REPO

HEAVY = ("torch", "transformers", "numpy", "onnxruntime", "sklearn", "pandas", "stack", "training", "handlers")


def pins(name: str) -> dict[str, str]:
    lines = (REPO / "requirements" / name).read_text().splitlines()
    return dict(line.lower().split("==") for line in lines if line and not line.startswith("#"))


def test_gateway_imports_nothing_heavy() -> None:
    probe = (
        "import sys, gateway.__main__, gateway.app; gateway.app.create_app; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "fastapi" in loaded
    assert loaded.isdisjoint(HEAVY)


def test_every_package_the_gateway_imports_is_in_its_lock() -> None:
    """What gateway/*.py imports by name must be installed by the image: fastapi-offline (added to runtime.txt for the
    offline /docs) once reached runtime.txt only, and the image's gateway failed at start-up."""
    imported = top_level_imports(REPO / "gateway")
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"gateway", "torchserve_protocol", "__future__"})
    distributions = metadata.packages_distributions()
    needed = {dist.lower().replace("_", "-") for module in third_party for dist in distributions.get(module, [module])}
    locked = {name.replace("_", "-") for name in pins("gateway.txt")}
    assert "fastapi" in needed
    assert needed <= locked, f"requirements/gateway.txt lacks {sorted(needed - locked)}"


def test_gateway_lock_is_a_subset_of_the_runtime_lock() -> None:
    gateway, runtime = pins("gateway.txt"), pins("runtime.txt")
    assert gateway.keys().isdisjoint({"torch", "transformers", "tokenizers", "numpy"})
    assert {name: runtime.get(name) for name in gateway} == gateway
