"""The publish gate: two checks before ``set-default``, ``promote`` or ``canary`` sends traffic to a version.

1. **Recorded quality** (:func:`check_recorded`): the validation metric the candidate archive's own ``metrics.json``
   records for what it serves (the chosen int8 candidate's) may be at most ``margin`` below the current default's.
2. **Served quality** (:func:`served_quality`): the validation rows training evaluated, drawn again from the data,
   go through the running TorchServe pinned to that very version; the metric it gives, computed as training computes
   it, must equal the recorded one within ``tolerance``. A broken archive, a wrong tokenizer, swapped labels or a
   quantization that does not reproduce all show here, before any client sees them.

A refusal is a :class:`GateRefusal` whose message is one line holding both numbers. :func:`check` runs both; with
``force`` it refuses nothing: it still measures what it can and says which refusals it skipped
(:attr:`Quality.forced`), or why nothing could be measured (:class:`Skipped`). docs/deployment.md has the thresholds.
"""

from __future__ import annotations

import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from stack.management import KEY_WAIT_S
from torchserve_protocol.archives import parse_archive
from torchserve_protocol.keys import KeyFile, KeyFileError, bearer, fresh_key, is_invalid_key
from torchserve_protocol.limits import HANDLER_MAX_TEXTS, TORCHSERVE_MAX_REQUEST_BYTES
from training.tasks import DataError, EvaluatedRows, Examples, Task, compute_metrics, get_task, rows_sha256

MARGIN = 0.01  # how far a candidate's recorded metric may fall below the default's
TOLERANCE = 0.005  # how far the served metric may differ from the recorded one (float noise flips no label)
EPS = 1e-9  # 0.585 - 0.575 is 0.01000000000000001 in floats: a difference equal to a threshold passes
IN_FLIGHT = 4  # requests at once: enough for TorchServe to batch them over its workers; more would only queue
METRICS_MEMBER = "metrics.json"
CONFIG_MEMBER = "model-config.yaml"


class GateRefusal(Exception):
    """The gate refuses a version; ``str()`` is one line that says why, with both numbers where there are two."""


@dataclass(frozen=True)
class Quality:
    """What the gate measured: publish records it in the store's state file and ``publish list`` shows it."""

    metric: str
    recorded: float  # the candidate's metrics.json: the served (chosen int8) candidate's validation value
    served: float  # the same validation rows through TorchServe, pinned to the candidate's version
    forced: tuple[str, ...] = ()  # with force: the refusals the gate skipped, one line each


@dataclass(frozen=True)
class Skipped:
    """With force: the served quality could not be measured (no record, other data, no answer); ``reason`` is the
    one line the gate would have refused with."""

    reason: str


@dataclass(frozen=True)
class Record:
    """What an archive says about the model it serves: its name and version, and its ``metrics.json``."""

    model: str
    version: str
    metrics: dict[str, Any]
    handler: dict[str, Any]  # model-config.yaml's handler section

    @property
    def who(self) -> str:
        return f"{self.model} {self.version}"


def read_record(archive: Path) -> Record:
    """The archive's name, version, ``metrics.json`` and handler settings; a refusal when it has no readable record."""
    named = parse_archive(archive)
    if named is None:
        raise GateRefusal(
            f"{archive.name} is not named <model>-<version>.mar: the gate cannot tell which version it is"
        )
    who = f"{named.name} {named.version}"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            if METRICS_MEMBER not in members:
                raise GateRefusal(
                    f"{who}: the archive has no {METRICS_MEMBER} (not built by a training run), so its quality is "
                    "unknown (--force skips the gate)"
                )
            metrics = json.loads(zf.read(METRICS_MEMBER))
            config = yaml.safe_load(zf.read(CONFIG_MEMBER)) if CONFIG_MEMBER in members else {}
    except (OSError, zipfile.BadZipFile, ValueError, yaml.YAMLError) as exc:
        raise GateRefusal(f"{who}: cannot read {archive}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(metrics, dict):
        raise GateRefusal(f"{who}: the archive's {METRICS_MEMBER} is not a JSON object")
    handler = (config or {}).get("handler") if isinstance(config, dict) else None
    return Record(named.name, named.version, metrics, handler if isinstance(handler, dict) else {})


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _recorded(record: Record) -> tuple[str, float]:
    metrics = record.metrics
    metric = metrics.get("metric")
    # the archive serves exactly the chosen candidate (training/int8_check.py); older reports only have the epoch's
    chosen = (metrics.get("quantization") or {}).get("chosen") or {}
    for source in (chosen.get("validation"), metrics.get("best_validation")):
        if isinstance(metric, str) and isinstance(source, dict) and (value := _number(source.get(metric))) is not None:
            return metric, value
    raise GateRefusal(
        f"{record.who}: the archive's {METRICS_MEMBER} records no validation "
        f"{metric if isinstance(metric, str) else 'metric'}, so its quality is unknown (--force skips the gate)"
    )


def recorded_quality(archive: Path) -> tuple[str, float]:
    """``(metric, value)``: the validation metric recorded for what the archive serves (the chosen int8 candidate's
    ``quantization.chosen.validation``, else the best epoch's ``best_validation``); a refusal without one."""
    return _recorded(read_record(archive))


def check_recorded(candidate: Path, default: Path | None, *, margin: float = MARGIN) -> tuple[str, float]:
    """The candidate's recorded ``(metric, value)``; a refusal when it is more than ``margin`` below the default's.

    With no default (a first version), a default without a record, or one scored on another metric, there is
    nothing to compare: one old archive must not block every successor."""
    record = read_record(candidate)
    metric, value = _recorded(record)
    if default is None or default.resolve() == candidate.resolve():
        return metric, value
    try:
        base = read_record(default)
        base_metric, base_value = _recorded(base)
    except GateRefusal:
        return metric, value
    below = base_value - value
    if base_metric == metric and below > margin + EPS:
        raise GateRefusal(
            f"{record.who}: recorded {metric} {value:.3f} is {below:.3f} below the default {base.version}'s "
            f"{base_value:.3f} (margin {margin:g}; --force skips the gate)"
        )
    return metric, value


def _labels(record: Record, task: Task) -> tuple[str, ...]:
    """The label names of the data's indices. The data readers index the task's labels; the archive's training
    record must say the same, or its model was trained on another meaning of the indices."""
    trained = record.metrics.get("labels")
    if trained is not None and tuple(trained) != task.labels:
        raise GateRefusal(
            f"{record.who}: trained with labels {list(trained)}, but the {task.name} data are labelled "
            f"{list(task.labels)}: the data do not match"
        )
    return task.labels


def evaluated_rows(record: Record, task: Task, data_dir: Path) -> Examples:
    """The validation rows training evaluated, drawn again from ``data_dir`` with training's readers; a refusal when
    the data there are not those rows (another release, other labels, another subset)."""
    try:
        full = task.load(data_dir).validation
    except DataError as exc:
        raise GateRefusal(f"{record.who}: {exc}") from None
    raw = record.metrics.get("validation_rows")
    if raw is None:  # archives from before the record: only the full split can be drawn, and only its size checked
        count = (record.metrics.get("rows") or {}).get("validation")
        if count != len(full):
            raise GateRefusal(
                f"{record.who}: {data_dir} has {len(full)} {task.name} validation rows, training evaluated {count} "
                f"({METRICS_MEMBER} rows.validation): the data do not match"
            )
        return full
    try:
        recorded = EvaluatedRows(**raw)
    except TypeError:
        raise GateRefusal(f"{record.who}: {METRICS_MEMBER} validation_rows is not split, count, seed, sha256") from None
    if recorded.split != "validation":
        raise GateRefusal(f"{record.who}: training evaluated the {recorded.split} split; the gate measures validation")
    rows = recorded.draw(full)
    if (digest := rows_sha256(rows)) != recorded.sha256:
        raise GateRefusal(
            f"{record.who}: the {len(rows)} validation rows drawn from {data_dir} (seed {recorded.seed}) are not the "
            f"{recorded.count} training evaluated (sha256 {digest[:12]} != recorded {recorded.sha256[:12]}): the data "
            "do not match, so a served metric would not be comparable"
        )
    return rows


def batches(texts: list[str], *, max_texts: int, max_bytes: int = TORCHSERVE_MAX_REQUEST_BYTES) -> list[list[str]]:
    """``texts`` in order, in requests of at most ``max_texts`` texts whose JSON body fits ``max_bytes``."""
    out: list[list[str]] = []
    size = 0
    for text in texts:
        cost = len(json.dumps(text).encode("utf-8")) + 2  # the text, quoted and escaped, and its ", "
        if not out or len(out[-1]) >= max_texts or size + cost > max_bytes - len('{"texts": []}'):
            out.append([])
            size = 0
        out[-1].append(text)
        size += cost
    return out


class PinnedVersion:
    """``POST /predictions/<model>/<version>`` with the inference key of ``key_file.json``; a rejected key is read
    again as every client here does it (:func:`torchserve_protocol.keys.fresh_key`) and the request retried once."""

    def __init__(self, record: Record, *, inference_url: str, key_file: Path, deadline: float) -> None:
        self.record = record
        self.url = f"{inference_url.rstrip('/')}/predictions/{record.model}/{record.version}"
        self.keys = KeyFile(key_file)
        self.deadline = deadline
        self.key = self._fresh(rejected=None)

    def _fresh(self, *, rejected: str | None) -> str:
        try:
            return fresh_key(self.keys, "inference", rejected=rejected, wait_s=KEY_WAIT_S)
        except KeyFileError as exc:
            raise GateRefusal(f"{self.record.who}: {exc}") from None

    def _post(self, client: httpx.Client, texts: list[str], key: str) -> httpx.Response:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise GateRefusal(f"{self.record.who}: the served check ran out of time (raise its timeout)")
        try:
            return client.post(self.url, json={"texts": texts}, headers=bearer(key), timeout=left)
        except httpx.HTTPError as exc:
            raise GateRefusal(f"{self.record.who}: TorchServe's inference API at {self.url}: {exc!r}") from None

    def probabilities(self, client: httpx.Client, texts: list[str]) -> list[dict[str, float]]:
        """Each text's ``{label: probability}``, in order."""
        key = self.key
        response = self._post(client, texts, key)
        if is_invalid_key(response.status_code, response.content):
            self.key = key = self._fresh(rejected=key)
            response = self._post(client, texts, key)
        if response.status_code != 200:
            raise GateRefusal(
                f"{self.record.who}: TorchServe answered {response.status_code} to {len(texts)} validation texts: "
                f"{response.text.strip().splitlines()[0][:200] if response.text.strip() else '(no body)'}"
            )
        answers = response.json()
        if not isinstance(answers, list) or len(answers) != len(texts):
            raise GateRefusal(f"{self.record.who}: TorchServe's answer to {len(texts)} texts is not a list of as many")
        return [answer["probabilities"] for answer in answers]


def predictions(answers: list[dict[str, float]], labels: tuple[str, ...], *, who: str) -> list[int]:
    """Label indices (the data's) from the handler's ``{label: probability}`` answers, by label name: an archive whose
    names are swapped answers the wrong index. Ties go to the lower index, as training's argmax does."""
    out = []
    for probs in answers:
        if set(probs) != set(labels):
            raise GateRefusal(f"{who}: answers labels {sorted(probs)}, the data's are {list(labels)}")
        out.append(max(range(len(labels)), key=lambda i: probs[labels[i]]))
    return out


def served_quality(
    archive: Path, *, inference_url: str, key_file: Path, data_dir: Path, timeout: float = 300.0
) -> float:
    """The archive's metric on the validation rows training evaluated, answered by TorchServe pinned to the
    archive's version (it must be registered); a refusal when it cannot be measured."""
    record = read_record(archive)
    metric, _ = _recorded(record)
    try:
        task = get_task(record.model)
    except DataError:
        raise GateRefusal(f"{record.who}: no task {record.model!r} in training/tasks.py to measure it on") from None
    labels = _labels(record, task)
    rows = evaluated_rows(record, task, data_dir)
    pinned = PinnedVersion(record, inference_url=inference_url, key_file=key_file, deadline=time.monotonic() + timeout)
    requests = batches(rows.texts, max_texts=int(record.handler.get("max_texts", HANDLER_MAX_TEXTS)))
    with httpx.Client() as client, ThreadPoolExecutor(IN_FLIGHT) as pool:
        answers = [a for answered in pool.map(lambda b: pinned.probabilities(client, b), requests) for a in answered]
    scores = compute_metrics(rows.labels, predictions(answers, labels, who=record.who))
    if metric not in scores:
        raise GateRefusal(f"{record.who}: training's metrics have no {metric!r} (they have {', '.join(scores)})")
    return scores[metric]


def check(
    candidate: Path,
    default: Path | None,
    *,
    inference_url: str,
    key_file: Path,
    data_dir: Path,
    margin: float = MARGIN,
    tolerance: float = TOLERANCE,
    force: bool = False,
) -> Quality | Skipped:
    """Both checks, the cheap one first; a :class:`GateRefusal` unless both pass. With ``force`` nothing is refused:
    the served quality is still measured (a :class:`Quality` naming the refusals skipped), and where it cannot be
    (no record, other data, TorchServe does not answer) the result is :class:`Skipped` with the reason."""
    forced: list[str] = []
    try:
        metric, recorded = check_recorded(candidate, default, margin=margin)
    except GateRefusal as refusal:
        if not force:
            raise
        try:
            metric, recorded = recorded_quality(candidate)
        except GateRefusal as unrecorded:
            return Skipped(str(unrecorded))
        forced.append(str(refusal))
    try:
        served = served_quality(candidate, inference_url=inference_url, key_file=key_file, data_dir=data_dir)
    except GateRefusal as refusal:
        if not force:
            raise
        return Skipped(str(refusal))
    if (differs := abs(served - recorded)) > tolerance + EPS:
        record = read_record(candidate)
        line = (
            f"{record.who}: served {metric} {served:.3f} differs from the recorded {recorded:.3f} by {differs:.3f} "
            f"(> {tolerance:g}): the archive does not reproduce its training (broken archive, tokenizer or "
            "quantization)"
        )
        if not force:
            raise GateRefusal(line)
        forced.append(line)
    return Quality(metric=metric, recorded=recorded, served=served, forced=tuple(forced))
