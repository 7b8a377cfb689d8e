"""Which texts share a batch: shuffled training batches (optionally of similar lengths) and evaluation batches of
similar lengths. The training loop (:mod:`training.fit`) and the teacher's logits (:mod:`training.distill`) use
them; neither imports the other for them."""

from __future__ import annotations

import numpy as np


def make_batches(lengths: list[int], batch_size: int, *, rng: np.random.Generator, group: bool) -> list[list[int]]:
    """Shuffled batches; with ``group``, texts of similar length share a batch (less padding, as HF's
    ``group_by_length``): shuffle, sort within windows of 50 batches, then shuffle the batch order."""
    order = rng.permutation(len(lengths)).tolist()
    if group:
        window = batch_size * 50
        order = [
            i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def by_length(texts: list[str], size: int) -> list[list[int]]:
    """Evaluation batches of similar-length texts (order is restored by the caller)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]
