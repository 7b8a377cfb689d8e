"""schemathesis (an independent tool, pinned in requirements/dev.txt) checks the live gateway against its own
``/openapi.json`` with every check it has (``--checks all``): no 5xx, documented status codes, content types,
headers and response schemas, schema-invalid data refused, schema-valid data accepted, unsupported methods
refused, ... Real stack on loopback; deterministic generation, no example database, bounded examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = 30  # per operation and generation phase
CLI = Path(sys.executable).parent / "st"


def test_the_gateway_conforms_to_its_openapi_document(gateway_url: str, tmp_path: Path) -> None:
    command = [
        str(CLI), "run", f"{gateway_url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "30",
        "--report-dir", str(tmp_path),
        "--no-color",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    output = run.stdout + run.stderr
    print(output[-3000:])
    assert run.returncode == 0, output[-12000:]
