"""Which texts share a batch: every row once, similar lengths together."""

from __future__ import annotations

import numpy as np

from training.batches import by_length, make_batches


def test_length_grouped_batches_cover_every_row_once() -> None:
    lengths = [(i * 7) % 23 + 1 for i in range(100)]
    batches = make_batches(lengths, 8, rng=np.random.default_rng(0), group=True)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert sorted(len(b) for b in batches) == [4] + [8] * 12
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spread) < 23  # grouped: no batch mixes the shortest and the longest texts


def test_evaluation_batches_hold_similar_lengths_and_every_row() -> None:
    texts = ["a" * n for n in (5, 1, 9, 3, 7)]
    assert by_length(texts, 2) == [[1, 3], [0, 4], [2]]
