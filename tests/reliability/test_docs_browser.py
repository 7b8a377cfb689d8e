"""/docs works with no internet: a real headless Chromium loads the page from the gateway (Swagger UI's assets
served by the gateway itself, under its content-security policy) and, once the page's scripts ran, lists every
operation. Skipped, with the reason, only where no Chromium is installed (`make test` installs it from Debian)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from gateway.settings import Settings
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.integration

BROWSER = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
OPERATIONS = {"/generate", "/generate/batch", "/predict", "/predict/batch", "/health", "/ready", "/metrics", "/models"}


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install -y chromium, or make test)")
def test_docs_render_every_operation_in_a_real_browser_offline() -> None:
    settings = Settings.model_validate({"key_file": "/nonexistent/key_file.json"})
    with running_gateway(settings) as base_url:
        dump = subprocess.run(
            [
                str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--virtual-time-budget=15000", "--dump-dom",
                f"{base_url}/docs",
            ],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    dom = dump.stdout
    listed = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert listed == OPERATIONS, (dump.returncode, dom[-2000:], dump.stderr[-2000:])
    assert "Text classification gateway" in dom
