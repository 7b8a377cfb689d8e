"""The task table: what each model learns, from which files, and how it is scored.

One entry per served model; ``train.py`` has no per-task code paths. A loader reads the raw files under the data
directory and returns plain lists (texts and integer labels) per split; a bad file raises :class:`DataError` with a
one-line message that names what was expected and where.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from torchserve_protocol.layout import REPO

# The datasets travel with the repository (data/, each folder with its SOURCE.md); DATA_DIR overrides.
REPO_DATA = REPO / "data"


def default_data_dir() -> Path:
    """``$DATA_DIR`` when set, else the repository's own ``data/``."""
    return Path(os.environ.get("DATA_DIR") or REPO_DATA)


class DataError(ValueError):
    """Training data that cannot be read; the message says what was expected and where."""


@dataclass
class Examples:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None, *, seed: int) -> Examples:
        """A seeded random subset of ``n`` rows (all rows when ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        keep = sorted(np.random.default_rng(seed).permutation(len(self))[:n].tolist())
        return Examples([self.texts[i] for i in keep], [self.labels[i] for i in keep])


def rows_sha256(examples: Examples) -> str:
    """sha256 of the rows in order, each text with its label (as JSON): another text, label or order shows."""
    rows = json.dumps([examples.texts, examples.labels], ensure_ascii=False)
    return hashlib.sha256(rows.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvaluatedRows:
    """The rows a run evaluated, recorded in metrics.json (``validation_rows``) so that another process (the publish
    gate, stack/gate.py) can draw the same rows from the data again and know when it could not."""

    split: str
    count: int  # the rows evaluated: the split's own, or a seeded subset of them (--max-eval-rows)
    seed: int  # the subset's seed (Examples.subset)
    sha256: str  # rows_sha256 of those rows

    @classmethod
    def of(cls, examples: Examples, *, split: str, seed: int) -> EvaluatedRows:
        return cls(split=split, count=len(examples), seed=seed, sha256=rows_sha256(examples))

    def draw(self, full: Examples) -> Examples:
        """The same rows from the full split, drawn as training drew them (:meth:`Examples.subset`)."""
        return full.subset(self.count, seed=self.seed)


@dataclass
class Splits:
    train: Examples
    validation: Examples
    test: Examples | None
    sources: dict[str, str] = field(default_factory=dict)  # data file (or hub dataset) -> sha256 (or revision)
    augmented: int = 0  # rows of ``train`` that --augment made (they come last)


@dataclass(frozen=True)
class Recipe:
    """How a task is trained on one base model, and how long that took on the reference machine."""

    epochs: int = 3
    # the learning-rate schedule's length (warm-up and linear decay span it); None: ``epochs``. Longer than
    # ``epochs`` stops training part-way down the decay, where a longer schedule's validation peaked
    schedule_epochs: int | None = None
    lr: float = 5e-5
    warmup_ratio: float = 0.0
    augment: str = "none"  # extra training rows (training/augment.py)
    minutes: float | None = None  # whole run (train, check, package) on 2 CPU cores, measured (docs/training.md)


GENERIC = Recipe()  # any other base model (a hub id or a folder)


@dataclass(frozen=True)
class Task:
    name: str  # also the model name served by TorchServe
    description: str
    labels: tuple[str, ...]  # index -> label name; written into config.json as id2label
    metric: str  # the validation metric that picks the best epoch and bounds the int8 drop
    reported: tuple[str, ...]  # the metrics shown in tables and plots (metric first)
    load: Callable[[Path], Splits]
    base_model: str  # the default base (a short name of training/base_models.py); docs/training.md says why
    recipes: dict[str, Recipe]  # per base short name; flags override each value; other bases get GENERIC

    def recipe(self, base_model: str) -> Recipe:
        return self.recipes.get(base_model, GENERIC)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Every metric the tasks report, computed locally with scikit-learn (``evaluate`` needs the hub)."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
    }


def fmt(metrics: dict[str, float]) -> str:
    """``mcc 0.4512 accuracy 0.8012``: metrics in a log line."""
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


# --- CoLA -------------------------------------------------------------------------------------------------------

COLA_FILES = {"train": ("in_domain_train.tsv",), "validation": ("in_domain_dev.tsv", "out_of_domain_dev.tsv")}


def read_cola_tsv(path: Path) -> Examples:
    """A raw CoLA release file: tab-separated, no header, 4 columns (source, label, original mark, sentence)."""
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) != 4 or row[1] not in ("0", "1"):
                raise DataError(
                    f"{path}:{line_no}: expected 4 tab-separated columns (source, label 0/1, mark, sentence), "
                    f"got {len(row)} column(s)"
                )
            labels.append(int(row[1]))
            texts.append(row[3])
    if not texts:
        raise DataError(f"{path} is empty (expected CoLA rows: source, label, mark, sentence)")
    return Examples(texts, labels)


def load_cola_from_hub() -> Splits:  # pragma: no cover - needs the network; tests never take this path
    import datasets

    glue = datasets.load_dataset("nyu-mll/glue", "cola")
    splits = {
        name: Examples([str(t) for t in glue[name]["sentence"]], [int(v) for v in glue[name]["label"]])
        for name in ("train", "validation")
    }
    fingerprint = {f"hub:nyu-mll/glue/cola/{name}": glue[name]._fingerprint for name in splits}
    return Splits(splits["train"], splits["validation"], None, sources=fingerprint)


def load_cola(data_dir: Path) -> Splits:
    folder = data_dir / "cola"
    paths = {split: [folder / name for name in names] for split, names in COLA_FILES.items()}
    every = [p for ps in paths.values() for p in ps]
    missing = [p for p in every if not p.is_file()]
    if missing and len(missing) == len(every) and not _offline():
        try:
            return load_cola_from_hub()
        except Exception as exc:  # pragma: no cover - network path
            raise DataError(
                f"no CoLA files under {folder} (expected {', '.join(p.name for p in every)}) and the hub fallback "
                f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
    if missing:
        raise DataError(
            f"missing CoLA file {missing[0]} (expected {', '.join(p.name for p in every)} under {folder}; "
            "set --data-dir or DATA_DIR, or with the network and none of the files there, HF_HUB_OFFLINE=0 loads "
            "GLUE CoLA from the hub)"
        )
    loaded = {}
    for split, ps in paths.items():
        parts = [read_cola_tsv(p) for p in ps]
        loaded[split] = Examples([t for e in parts for t in e.texts], [v for e in parts for v in e.labels])
    return Splits(loaded["train"], loaded["validation"], None, sources={str(p): sha256(p) for p in every})


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# --- Google Play review sentiment ------------------------------------------------------------------------------

SENTIMENT_FILE = Path("google_play_reviews") / "reviews.csv"


def score_to_label(score: int) -> int:
    """Star rating -> 0 negative (1-2 stars), 1 neutral (3), 2 positive (4-5): the tutorial's mapping."""
    return 0 if score <= 2 else 1 if score == 3 else 2


def read_reviews(path: Path) -> Examples:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"missing reviews file {path} (expected a CSV with columns content, score; set --data-dir)")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable CSV (expected columns content, score): {exc}") from exc
    missing = [c for c in ("content", "score") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)}: expected content (review text) and score (1-5), "
            f"found {', '.join(map(str, frame.columns))}"
        )
    frame = frame.dropna(subset=["content", "score"])
    scores = pd.to_numeric(frame["score"], errors="coerce")
    if frame.empty or scores.isna().any() or not scores.between(1, 5).all():
        raise DataError(f"{path}: column score must hold star ratings 1-5 on every row with content")
    return Examples(frame["content"].astype(str).tolist(), [score_to_label(int(s)) for s in scores])


def load_sentiment(data_dir: Path) -> Splits:
    """90/5/5 train/validation/test with seed 42, exactly as the tutorial splits it."""
    from sklearn.model_selection import train_test_split

    path = data_dir / SENTIMENT_FILE
    rows = read_reviews(path)
    index = np.arange(len(rows))
    train_idx, rest_idx = train_test_split(index, test_size=0.1, random_state=42)
    val_idx, test_idx = train_test_split(rest_idx, test_size=0.5, random_state=42)

    def take(idx: np.ndarray) -> Examples:
        return Examples([rows.texts[i] for i in idx], [rows.labels[i] for i in idx])

    return Splits(take(train_idx), take(val_idx), take(test_idx), sources={str(path): sha256(path)})


TASKS: dict[str, Task] = {
    "cola": Task(
        name="cola",
        description="GLUE CoLA: is the sentence grammatically acceptable?",
        labels=("unacceptable", "acceptable"),
        metric="mcc",
        reported=("mcc", "accuracy"),
        load=load_cola,
        base_model="mpnet",
        recipes={
            "mpnet": Recipe(epochs=2, lr=3e-5, warmup_ratio=0.1, augment="agreement", minutes=20),
            "minilm": Recipe(minutes=5),
        },
    ),
    "sentiment": Task(
        name="sentiment",
        description="Google Play app reviews: negative (1-2 stars), neutral (3), positive (4-5)",
        labels=("negative", "neutral", "positive"),
        metric="accuracy",
        reported=("accuracy", "macro_f1"),
        load=load_sentiment,
        base_model="mpnet",
        recipes={
            "mpnet": Recipe(epochs=1, schedule_epochs=2, lr=3e-5, warmup_ratio=0.1, minutes=15),
            "minilm": Recipe(minutes=8),
        },
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
