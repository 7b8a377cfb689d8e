"""What README.md and docs/*.md point at exists: files, links and their anchors, `python -m` modules, `make`
targets, the tests they cite; and every "tested" claim names its test."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.docs.markdown import DOCS, LINK, anchors, blocks, code_blocks, inline_code, name, prose
from torchserve_protocol.layout import REPO

PROJECT_PACKAGES = {"benchmarks", "gateway", "handlers", "stack", "torchserve_protocol", "training"}
MADE_AT_RUN_TIME = {"model_store", "run", "artifacts", "logs"}  # what the stack and training write (git-ignored)
TOP = {p.name for p in REPO.iterdir() if not p.name.startswith(".")} - MADE_AT_RUN_TIME
REPO_PATH = re.compile(r"^[\w.-]+(?:/[\w.*-]+)+/?$")
MODULE = re.compile(r"\bpython3? -m ([\w.]+)")
MAKE = re.compile(r"(?:^|[\s;&(])make (?:-\S+ )*([a-z][a-z-]*)")
TEST_FILE = re.compile(r"\btest_[\w*]+\.py\b")
TEST_FUNCTION = re.compile(r"\btest_\w+\b(?![.*])")
TESTED = re.compile(r"\btested\b|\ba test checks\b", flags=re.I)
TESTS = sorted((REPO / "tests").rglob("*.py"))
DOC_IDS = [name(doc) for doc in DOCS]


def code_of(doc: Path) -> list[str]:
    """Inline code spans and the lines of code blocks, shell comments dropped."""
    lines = [line for block in code_blocks(doc) for line in block.splitlines()[1:-1]]
    return inline_code(doc) + [re.sub(r"(^|\s)#.*$", "", line) for line in lines]


def words(text: str) -> list[str]:
    return [word.strip("()[],.;:'\"") for word in text.split()]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_repository_path_exists(doc: Path) -> None:
    paths = {w for span in code_of(doc) for w in words(span) if REPO_PATH.match(w) and w.split("/")[0] in TOP}
    missing = sorted(p for p in paths if not any(REPO.glob(p.rstrip("/"))))
    assert missing == [], f"{name(doc)} names paths that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == [], f"{name(doc)} links to what does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_python_module_it_runs_exists(doc: Path) -> None:
    modules = {m for span in code_of(doc) for m in MODULE.findall(span) if m.split(".")[0] in PROJECT_PACKAGES}
    missing = []
    for module in sorted(modules):
        spec = importlib.util.find_spec(module)
        runnable = spec is not None and (
            importlib.util.find_spec(f"{module}.__main__") is not None
            if spec.submodule_search_locations
            else "__main__" in Path(str(spec.origin)).read_text()
        )
        if not runnable:
            missing.append(module)
    assert missing == [], f"{name(doc)} runs modules that `python -m` cannot run"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_make_target_it_names_exists(doc: Path) -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    named = {t for span in code_of(doc) for t in MAKE.findall(span)}
    assert named - targets == set(), f"{name(doc)} names make targets the Makefile lacks"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_test_it_cites_exists(doc: Path) -> None:
    text = prose(doc) + "".join(code_blocks(doc))
    files = {p.name for p in TESTS}
    functions = {f for p in TESTS for f in re.findall(r"^(?:async )?def (test_\w+)", p.read_text(), flags=re.M)}
    missing = [f for f in set(TEST_FILE.findall(text)) if not any(Path(n).match(f) for n in files)]
    missing += [f for f in set(TEST_FUNCTION.findall(text)) if f not in functions and f + ".py" not in files]
    assert sorted(missing) == [], f"{name(doc)} cites tests that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_tested_claim_names_its_test(doc: Path) -> None:
    """A paragraph, list item or table row that says "tested" names the test (a tests/ path or a test file)."""
    claims = [b for b in blocks(doc) if TESTED.search(b) and not b.startswith("#")]
    unnamed = [b for b in claims if not re.search(r"\btests/|\btest_\w+", b)]
    assert unnamed == [], f"{name(doc)} says 'tested' without naming the test"


def test_the_scans_find_what_the_readme_names() -> None:
    """The checks above pass vacuously if a scan finds nothing: each finds something it must."""
    readme, testing = REPO / "README.md", REPO / "docs" / "testing.md"
    code = code_of(readme)
    assert "tests/tiny_models.py" in {w for span in code_of(testing) for w in words(span)}
    assert "stack.publish" in {m for span in code for m in MODULE.findall(span)}
    assert {"serve", "bench", "test-compose"} <= {t for span in code for t in MAKE.findall(span)}
    assert "docs/configuration.md" in LINK.findall(prose(readme))
    assert any(TESTED.search(b) for b in blocks(REPO / "docs" / "handler.md"))
