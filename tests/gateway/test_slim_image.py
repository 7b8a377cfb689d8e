"""The gateway image installs requirements/gateway.txt only (no torch, no transformers): the gateway package must
import nothing outside it, and the lock must agree with runtime.txt, the environment the other tests run in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
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


def test_gateway_lock_is_a_subset_of_the_runtime_lock() -> None:
    gateway, runtime = pins("gateway.txt"), pins("runtime.txt")
    assert gateway.keys().isdisjoint({"torch", "transformers", "tokenizers", "numpy"})
    assert {name: runtime.get(name) for name in gateway} == gateway
