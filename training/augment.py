"""Training-set augmentation: extra labelled rows made from the training split only (never validation or test).

``agreement`` (CoLA): a subject-verb agreement error made from each acceptable training sentence that holds a
finite form of *be*, *have* or *do*: its first such form is swapped for the other number ("is" <-> "are", "was"
<-> "were", "has" <-> "have", "does" <-> "do", "am" -> "are") and the copy is labelled unacceptable. Agreement
errors are one of the violations CoLA's unacceptable sentences hold, and the original project's own example ("I
are a boy") is one. A swap can leave a sentence acceptable ("the sheep is" / "the sheep are"): such rows are label
noise, and the validation score is what says whether the trade pays (measured: docs/training.md). A made sentence
that the data already holds, in any split and with either label, is dropped, and so is a repeat: the training set
never contradicts or repeats itself, and never learns a sentence of validation or test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from training.tasks import Examples

SWAPS = {"is": "are", "are": "is", "was": "were", "were": "was", "am": "are", "has": "have", "have": "has",
         "does": "do", "do": "does"}  # fmt: skip
FINITE_FORM = re.compile(r"\b(" + "|".join(SWAPS) + r")\b")  # lower case: a capitalised first word is left alone


def agreement_errors(train: Examples, *, acceptable: int = 1, unacceptable: int = 0) -> Examples:
    """One agreement error per acceptable sentence with a form in :data:`SWAPS`, in the training set's order."""
    texts = []
    for text, label in zip(train.texts, train.labels, strict=True):
        found = FINITE_FORM.search(text) if label == acceptable else None
        if found:
            texts.append(text[: found.start()] + SWAPS[found.group(1)] + text[found.end() :])
    return Examples(texts, [unacceptable] * len(texts))


# task -> augmentation name -> the extra rows it makes from the training split
AUGMENTATIONS: dict[str, dict[str, Callable[[Examples], Examples]]] = {"cola": {"agreement": agreement_errors}}
NONE = "none"


def augmented(task: str, name: str, train: Examples, *, held: Iterable[str] = ()) -> tuple[Examples, int]:
    """The training split followed by the named augmentation's rows that are neither training texts nor ``held``
    (the other splits' texts), and how many rows were added."""
    if name == NONE:
        return train, 0
    known = {*train.texts, *held}
    extra = AUGMENTATIONS[task][name](train)
    texts, labels = list(train.texts), list(train.labels)
    for text, label in zip(extra.texts, extra.labels, strict=True):
        if text not in known:
            known.add(text)
            texts.append(text)
            labels.append(label)
    return Examples(texts, labels), len(texts) - len(train)
