"""Students (``--student-of``): the cut (layers, embeddings, head, tokenizer and labels copied exactly, from tiny BERT
and MPNet teachers), the hidden-state loss, a real student of a really trained tiny teacher packaged as the next
version, and the teacher's refusals, each one line."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.text_classification import load, predict, settings_from
from tests.students import TEACHER_LAYERS, Taught
from tests.tiny_models import COLA_LABELS, SENTIMENT_LABELS, make_tiny_classifier
from training.arguments import TrainingError
from training.distill import hidden_state_loss, teacher_facts
from training.student import LAYER_KEY, Teacher, build, find_teacher, spread
from training.train import main as train


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_k_layers_are_spread_evenly_from_the_first() -> None:
    assert spread(12, 6) == (0, 2, 4, 6, 8, 10)
    assert spread(12, 8) == (0, 1, 3, 4, 6, 7, 9, 10)
    assert spread(12, 12) == tuple(range(12))
    assert spread(4, 2) == (0, 2)
    with pytest.raises(TrainingError, match="--student-depth 13: the teacher has 12 layers"):
        spread(12, 13)


@pytest.mark.parametrize("mpnet", [False, True], ids=["bert", "mpnet"])
@pytest.mark.parametrize("layers", [(), (1, 3)], ids=["default", "chosen"])
def test_a_student_is_exactly_its_teachers_layers_embeddings_and_head_with_its_tokenizer_and_labels(
    mpnet: bool, layers: tuple[int, ...], tmp_path: Path
) -> None:
    folder = make_tiny_classifier(tmp_path / "teacher", COLA_LABELS, seed=5, layers=TEACHER_LAYERS, mpnet=mpnet)
    chosen, total = build(Teacher("t", folder, {}), tmp_path / "student", labels=COLA_LABELS, layers=layers)
    assert (chosen, total) == (layers or (0, 2), TEACHER_LAYERS)  # default: half the teacher's layers, spread

    teacher = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    student_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    student = student_model.state_dict()
    assert student_model.config.num_hidden_layers == len(chosen)
    assert student_model.config.id2label == {0: "unacceptable", 1: "acceptable"}
    copied = {}
    for key, value in student.items():
        match = LAYER_KEY.match(key)
        source = key if match is None else f"{match['stack']}{chosen[int(match['index'])]}{match['rest']}"
        assert torch.equal(value, teacher[source]), key
        copied[key] = source
    outside = {k for k in student if not LAYER_KEY.match(k)}
    assert outside == {k for k in teacher if not LAYER_KEY.match(k)}  # embeddings, bias, pooler, head: all of them
    assert any("embeddings.word_embeddings" in k for k in outside)
    assert any(k.startswith("classifier") for k in outside)
    assert ("mpnet.encoder.relative_attention_bias.weight" in outside) == mpnet
    assert f".layer.{chosen[1]}.attention" in copied[next(k for k in student if ".layer.1.attention" in k)]

    texts = ["I are a boy.", "The app crashes on every update."]
    tokenizers = [AutoTokenizer.from_pretrained(f) for f in (folder, tmp_path / "student")]
    assert tokenizers[0](texts)["input_ids"] == tokenizers[1](texts)["input_ids"]
    assert tokenizers[0].get_vocab() == tokenizers[1].get_vocab()
    assert tokenizers[0].all_special_tokens == tokenizers[1].all_special_tokens


def test_layers_outside_the_teacher_or_out_of_order_and_other_labels_are_refused(tmp_path: Path) -> None:
    folder = make_tiny_classifier(tmp_path / "teacher", COLA_LABELS, layers=TEACHER_LAYERS)
    teacher = Teacher("cola-1.0", folder, {})
    for layers in ((0, 4), (2, 1), (1, 1)):
        with pytest.raises(TrainingError, match=r"expected increasing layers of the teacher's 0\.\.3$"):
            build(teacher, tmp_path / "s", labels=COLA_LABELS, layers=layers)
    with pytest.raises(TrainingError, match=r"^teacher cola-1\.0 answers unacceptable, acceptable, not this task's"):
        build(teacher, tmp_path / "s", labels=SENTIMENT_LABELS)


def test_the_hidden_state_loss_pairs_each_student_layer_with_its_source_and_ignores_padding() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4) for _ in range(5)]  # embeddings + 4 layers; 2 texts of 3 tokens, 4 wide
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    student = [teacher[0], teacher[1], teacher[3]]  # its layers 0 and 1 are the teacher's 0 and 2
    assert hidden_state_loss(student, teacher, (0, 2), mask).item() == 0
    assert hidden_state_loss(student, teacher, (0, 1), mask).item() > 0
    padded = [s.clone() for s in student]
    padded[2][1, 2] += 100  # the second text's padding: no loss
    assert hidden_state_loss(padded, teacher, (0, 2), mask).item() == 0
    off = [s.clone() for s in student]
    off[1][0, 0, 0] += 1.0  # one value of one real token, one layer: 1 / (5 tokens x 4 values) / 2 layers
    assert hidden_state_loss(off, teacher, (0, 2), mask).item() == pytest.approx(1 / 20 / 2)


def test_a_student_of_the_served_default_is_its_next_version_and_names_its_teacher(
    taught: Taught, tmp_path: Path
) -> None:
    metrics = json.loads((taught.student_run / "metrics.json").read_text())
    assert metrics["version"] == "2.0"
    hyper = metrics["hyperparameters"]
    assert (hyper["student_of"], hyper["student_layers"], hyper["student_depth"]) == ("cola-1.0", [0, 2], 2)
    assert hyper["hidden_loss_weight"] == 1.0
    assert hyper["augment"] == "agreement"  # the teacher is here to label the made sentences too
    assert metrics["rows"]["augmented"] > 0
    teacher = metrics["teacher"]
    assert (teacher["student_of"], teacher["layers"], teacher["teacher_layers"]) == ("cola-1.0", [0, 2], 4)
    assert teacher["teacher"]["archive"] == "cola-1.0.mar"
    assert teacher["teacher"]["folder"] == str(taught.teacher_run / "best")
    taught_metrics = json.loads((taught.teacher_run / "metrics.json").read_text())
    assert teacher["teacher"]["best_validation"] == taught_metrics["best_validation"]
    assert metrics["base"]["name"] == "2 of the 4 layers of cola-1.0"
    assert metrics["quantization"]["chosen"]["drop"] <= 0.01  # checked and calibrated like every archive
    assert "calibration" in metrics["quantization"]

    archive = taught.store / "cola-2.0.mar"
    card = (taught.store / "cola-2.0.md").read_text()
    assert card.startswith("# cola 2.0")
    assert "Base model: layers 0,2 of `cola-1.0`" in card
    assert "A student of `cola-1.0` (teacher weights" in card
    assert "its 2 layers started as the teacher's layers 0, 2 (of 4)" in card
    assert "and those layers' hidden states (weight 1)." in card
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(extracted)
    assert (extracted / "MODEL_CARD.md").read_text() == card
    assert json.loads((extracted / "metrics.json").read_text())["hyperparameters"]["student_of"] == "cola-1.0"
    config = json.loads((extracted / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert config["id2label"] == {"0": "unacceptable", "1": "acceptable"}
    with zipfile.ZipFile(taught.store / "cola-1.0.mar") as zf:
        assert zf.read("tokenizer.json") == (extracted / "tokenizer.json").read_bytes()  # the teacher's tokenizer
    settings = settings_from(yaml.safe_load((extracted / "model-config.yaml").read_text())["handler"])
    loaded = load(extracted, settings=settings)
    assert loaded.labels == list(COLA_LABELS)
    assert predict(loaded, ["I are a boy.", "The boy is happy."], max_length=settings.max_length).shape == (2, 2)


def test_a_student_packaged_again_from_its_run_still_names_its_teacher(taught: Taught, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(taught.store, store)
    args = ["--task", "cola", "--data-dir", str(taught.data_dir), "--model-store", str(store), "--max-eval-rows", "24"]
    assert train([*args, "--output", str(tmp_path / "again"), "--from-run", str(taught.student_run)]) == 0
    first, again = (json.loads((run / "metrics.json").read_text()) for run in (taught.student_run, tmp_path / "again"))
    assert (again["teacher"], again["base"]) == (first["teacher"], first["base"])
    assert again["hyperparameters"]["student_of"] == "cola-1.0"
    assert again["hyperparameters"]["student_layers"] == [0, 2]
    assert "A student of `cola-1.0`" in (store / "cola-3.0.md").read_text()


def test_a_teacher_is_a_version_of_the_store_or_a_runs_weights_folder(taught: Taught) -> None:
    found = find_teacher("cola-1.0", task="cola", store=taught.store)
    assert (found.label, found.folder) == ("cola-1.0", taught.teacher_run / "best")
    assert found.facts == teacher_facts(found.folder) | {"archive": "cola-1.0.mar"}
    assert find_teacher("default", task="cola", store=taught.store) == found  # served.json's default
    assert find_teacher(str(taught.store / "cola-1.0.mar"), task="cola", store=taught.store) == found
    for folder in (taught.teacher_run, taught.teacher_run / "best"):  # a run folder, or its best/
        by_folder = find_teacher(str(folder), task="cola", store=taught.store)
        assert (by_folder.folder, by_folder.facts) == (taught.teacher_run / "best", teacher_facts(by_folder.folder))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("weights gone", "error: teacher cola-1.0: {best} holds no fp32 weights (model.safetensors and config.json; "
         "the archive carries model.onnx only): pass --student-of <its run>/best (the folder that holds its fp32 "
         "weights), or train the teacher again"),
        ("another model there", "error: teacher cola-1.0: {best} holds another model (trained "
         "2000-01-01T00:00:00+00:00, the archive's {created}): pass --student-of <its run>/best (the folder that "
         "holds its fp32 weights), or train the teacher again"),
        ("no such version", "error: --student-of cola-7.0: no archive {store}/cola-7.0.mar and no such folder (pass "
         "cola-<version> of the model store or a run's best/ folder)"),
        ("another task", "error: --student-of sentiment-1.0 is a sentiment model, not cola"),
        ("no served.json", "error: --student-of alone takes cola's served default, and {empty}/served.json names "
         "none: pass --student-of cola-<version> or a run's best/ folder"),
    ],
)  # fmt: skip
def test_a_teacher_that_cannot_teach_is_refused_with_one_line_and_nothing_written(
    case: str, expected: str, taught: Taught, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, spec = tmp_path / "store", ["--student-of", "cola-1.0"]
    shutil.copytree(taught.store, store)
    if case == "no such version":
        spec = ["--student-of", "cola-7.0"]
    elif case == "another task":
        shutil.copy2(store / "cola-1.0.mar", store / "sentiment-1.0.mar")
        spec = ["--student-of", "sentiment-1.0"]
    elif case == "no served.json":
        store = tmp_path / "empty"
        store.mkdir()
        spec = ["--student-of"]
    before = sorted(p.name for p in store.iterdir())
    moved, best = tmp_path / "moved", taught.teacher_run / "best"
    kept = (best / "metrics.json").read_text()
    if case == "weights gone":  # the teacher's run folder was deleted after packaging
        shutil.move(taught.teacher_run, moved)
    elif case == "another model there":  # the run folder was trained into again
        (best / "metrics.json").write_text(json.dumps(json.loads(kept) | {"created": "2000-01-01T00:00:00+00:00"}))
    try:
        args = ["--task", "cola", "--data-dir", str(taught.data_dir), "--model-store", str(store), *spec]
        assert train([*args, "--output", str(tmp_path / "run")]) == 2
    finally:
        if moved.exists():
            shutil.move(moved, taught.teacher_run)
        (best / "metrics.json").write_text(kept)
    created, empty = json.loads(kept)["created"], tmp_path / "empty"
    assert one_line_error(capsys) == expected.format(best=best, store=store, empty=empty, created=created)
    assert sorted(p.name for p in store.iterdir()) == before
    assert not (tmp_path / "run").exists()
