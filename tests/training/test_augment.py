"""The agreement-error augmentation on CoLA's real training sentences: which rows it makes, and where they go."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.augment import AUGMENTATIONS, NONE, SWAPS, agreement_errors, augmented
from training.tasks import Examples, get_task


def test_each_acceptable_sentence_with_a_finite_be_have_or_do_gets_one_error_labelled_unacceptable() -> None:
    train = Examples(
        ["I am a boy.", "They have left.", "Is it raining?", "The cats was here.", "John left.", "It is what it is."],
        [1, 1, 1, 0, 1, 1],
    )
    made = agreement_errors(train)
    # the unacceptable row, the sentence with no such form and the capitalised first word make nothing
    assert made.texts == ["I are a boy.", "They has left.", "It are what it is."]
    assert made.labels == [0, 0, 0]


def test_every_swap_changes_number_and_words_are_matched_whole() -> None:
    assert all(SWAPS[SWAPS[form]] == form for form in SWAPS if form != "am")
    made = agreement_errors(Examples(["This island has wildlife.", "Dozens arrived.", "Thistle does grow."], [1, 1, 1]))
    assert made.texts == ["This island have wildlife.", "Thistle do grow."]


def test_a_made_sentence_the_data_already_holds_is_dropped() -> None:
    train = Examples(["The team is here.", "The team are here.", "It was late."], [1, 1, 1])
    rows, added = augmented("cola", "agreement", train, held=["It were late."])
    assert (added, rows.texts[3:], rows.labels[3:]) == (0, [], [])  # both swaps are acceptable rows, one is held


def test_on_the_real_cola_data_the_rows_come_last_and_hold_no_sentence_of_any_split(data_dir: Path) -> None:
    splits = get_task("cola").load(data_dir)
    train, added = augmented("cola", "agreement", splits.train, held=splits.validation.texts)
    assert added > 0.2 * sum(splits.train.labels)  # a fifth of the acceptable sentences or more
    assert train.texts[: len(splits.train)] == splits.train.texts
    assert train.labels[len(splits.train) :] == [0] * added
    made = train.texts[len(splits.train) :]
    assert len(set(made)) == added
    assert set(made).isdisjoint(splits.train.texts)
    assert set(made).isdisjoint(splits.validation.texts)
    assert len(agreement_errors(splits.train)) > added  # the real data does hold some of them
    assert augmented("cola", NONE, splits.train) == (splits.train, 0)


def test_only_cola_has_an_augmentation() -> None:
    assert set(AUGMENTATIONS) == {"cola"}
    with pytest.raises(KeyError):
        augmented("sentiment", "agreement", Examples(["fine app"], [2]))
