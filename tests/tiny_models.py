"""Tiny, randomly initialised BERT classifiers written to disk as ``save_pretrained`` directories (no hub)."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from training.onnx_build import CALIBRATION_FILE

COLA_LABELS = ("unacceptable", "acceptable")
SENTIMENT_LABELS = ("negative", "neutral", "positive")

_WORDS = [
    "i",
    "you",
    "he",
    "she",
    "it",
    "we",
    "they",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "a",
    "an",
    "the",
    "boy",
    "girl",
    "dog",
    "cat",
    "book",
    "app",
    "good",
    "bad",
    "great",
    "terrible",
    "love",
    "hate",
    "use",
    "this",
    "that",
    "not",
    "very",
    "so",
    "and",
    "or",
    "but",
    "to",
    "of",
    "in",
    "on",
    "for",
    "with",
    "my",
    "your",
    "their",
    "review",
    "works",
    "crashes",
    "update",
    "please",
    "fix",
    "time",
    "day",
    "friend",
    "analysis",
    "one",
    "more",
    "giving",
    "up",
]


def write_vocab(path: Path) -> Path:
    """A small uncased WordPiece vocabulary: special tokens, characters, ``##`` pieces and a few words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *_WORDS]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def make_tiny_classifier(
    out_dir: Path, labels: tuple[str, ...], *, seed: int = 0, layers: int = 2, mpnet: bool = False
) -> Path:
    """Save a 2-layer (``layers``), 32-wide BERT (or, with ``mpnet``, MPNet: relative-attention bias) classifier
    with ``id2label`` and its tokenizer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(out_dir / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    torch.manual_seed(seed)
    shape = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "initializer_range": 0.2,  # large random weights, so different texts get clearly different outputs
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    model = (
        # MPNet counts positions from its padding id + 1: [PAD] is 0 in this vocabulary
        MPNetForSequenceClassification(MPNetConfig(**shape, max_position_embeddings=130, pad_token_id=0))
        if mpnet
        else BertForSequenceClassification(BertConfig(**shape, max_position_embeddings=128))
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_calibration_texts(out_dir, seed=seed)
    return out_dir


def write_calibration_texts(out_dir: Path, *, seed: int, count: int = 48) -> None:
    """``calibration.json`` as a training run leaves it: texts (here random word strings of 1-40 words) that
    packaging calibrates static int8 activation ranges on."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(_WORDS, k=rng.randint(1, 40))) for _ in range(count)]
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(texts))
