"""An archive carries what its handler imports: TorchServe puts the archive's root on the worker's path and nothing
of this repository, so the handler must import from the unpacked archive alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from torchserve_protocol.archives import archives_in


def test_the_handler_imports_from_the_unpacked_archive_alone(tiny_store: Path, tmp_path: Path) -> None:
    archive = archives_in(tiny_store)[0].path
    with zipfile.ZipFile(archive) as unpacked:
        unpacked.extractall(tmp_path)
    assert (tmp_path / "torchserve_protocol" / "limits.py").is_file()

    probe = "import handlers.text_classifier_handler, torchserve_protocol.limits as l; print(l.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).is_relative_to(tmp_path)
