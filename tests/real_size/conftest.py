"""The real-size tier (`make test-real-size`): every deployment path with archives of the default models' size.

The archives are stand-ins (``python -m training.stand_in``): the MPNet default with an untrained head, packaged
through the real path, so they have the defaults' size and memory per worker; quality plays no part here. They are
built once per session (about a minute each), or copied from ``REAL_SIZE_ARCHIVES`` (a folder holding
``cola-1.0.mar``, ``sentiment-1.0.mar`` and ``cola-2.0.mar`` built by that command) to save the build.

What each step measures is collected in :data:`MEASURED` and written, at the end of the session, to
``REAL_SIZE_RECORD`` when set (``make test-real-size RECORD=1`` sets it to docs/results/sizing.json, which
``python -m stack.sizing`` renders into docs/deployment.md's sizing table).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from benchmarks.load import cola_sentences, review_texts
from torchserve_protocol.layout import REPO

ARCHIVES = {"cola-1.0.mar": ("cola", "1.0"), "sentiment-1.0.mar": ("sentiment", "1.0"), "cola-2.0.mar": ("cola", "2.0")}
MEASURED: dict[str, object] = {}


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the three real-size archives (the defaults' 1.0 versions and a cola 2.0 to publish)."""
    folder = tmp_path_factory.mktemp("stand-ins")
    given = os.environ.get("REAL_SIZE_ARCHIVES")
    for name, (task, version) in ARCHIVES.items():
        if given and (Path(given) / name).is_file():
            shutil.copy2(Path(given) / name, folder / name)
            continue
        cmd = [sys.executable, "-m", "training.stand_in", "--task", task, "--version", version]
        subprocess.run([*cmd, "--model-store", str(folder)], cwd=REPO, check=True, timeout=900)
    MEASURED["archives"] = {name: (folder / name).stat().st_size for name in ARCHIVES}
    return folder


@dataclass
class Load:
    """Client threads posting the README's two requests to ``base_url`` until stopped, counting every answer."""

    base_url: str
    data_dir: Path
    statuses: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, route: str, key: str, texts: list[str]) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    answer = client.post(route, json={key: texts[i % len(texts)]})
                    status, version = str(answer.status_code), answer.headers.get("X-Model-Version", "")
                except httpx.HTTPError as exc:
                    status, version = type(exc).__name__, ""
                    self.stop.wait(0.05)  # a refused connection fails at once: do not spin
                with self.lock:
                    self.statuses[f"{route} {status}"] += 1
                    if route == "/generate" and status == "200":
                        self.versions[version] += 1

    def __enter__(self) -> Load:
        sentences, reviews = cola_sentences(self.data_dir), review_texts(self.data_dir)
        for route, key, texts in (("/generate", "passage", sentences), ("/predict", "text", reviews)) * 2:
            thread = threading.Thread(target=self._run, args=(route, key, texts), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)

    @property
    def answered(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def failures(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.statuses.items() if not k.endswith(" 200")}


@pytest.fixture(scope="session", autouse=True)
def record_measurements() -> Iterator[None]:
    load_average = round(os.getloadavg()[0], 1)
    yield
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    MEASURED["measured"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip() or "?",
        "load_average": load_average,
    }
    print(f"\n[real-size tier] measured: {json.dumps(MEASURED, sort_keys=True)}")
    target = os.environ.get("REAL_SIZE_RECORD")
    if target and MEASURED:
        Path(target).write_text(json.dumps(MEASURED, indent=1, sort_keys=True) + "\n")
