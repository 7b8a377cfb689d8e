"""The ``onnxruntime`` engine: the graph built by training/onnx_build.py, served through the handler's own
``load`` / ``predict``, against the fp32 ``transformers`` model."""

from __future__ import annotations

import zipfile
from pathlib import Path

import onnx
import pytest
import torch

from handlers.onnx_engine import ONNX_FILE, OnnxClassifier
from handlers.text_classification import WEIGHTS_FILE, Loaded, Settings, length_groups, load, predict, settings_from
from training import onnx_build
from training.package import PackagingError, ServingConfig, package

TEXTS = ["i are a boy", "the dog is good and the app works well", "x", "Ünïcödé 😀 مرحبا " * 30]
FFN_OUT = tuple(f"bert.encoder.layer.{i}.output.dense" for i in range(2))


@pytest.fixture(scope="module")
def fp32_export(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_build.export_fp32(tiny_models["sentiment"], tmp_path_factory.mktemp("export") / "fp32.onnx")


def served(model_dir: Path, view: Path, fp32: Path, **settings: object) -> torch.Tensor:
    chosen = Settings(engine="onnxruntime", warmup=False, **settings)  # type: ignore[arg-type]
    loaded = load(onnx_build.served_view(model_dir, view, chosen, fp32=fp32), settings=chosen)
    assert isinstance(loaded.model, OnnxClassifier)
    return predict(loaded, TEXTS, max_length=chosen.max_length)


def reference(model_dir: Path) -> torch.Tensor:
    loaded = load(model_dir, settings=Settings(quantize=False, warmup=False))
    return predict(loaded, TEXTS, max_length=128)


def op_types(path: Path) -> dict[str, str]:
    return {node.name: node.op_type for node in onnx.load(str(path)).graph.node}


def test_fp32_graph_matches_the_transformers_model(tiny_models, fp32_export, tmp_path) -> None:
    got = served(tiny_models["sentiment"], tmp_path, fp32_export, quantize=False)
    assert torch.allclose(got, reference(tiny_models["sentiment"]), atol=1e-5)


def test_int8_graph_is_quantized_and_close_to_fp32(tiny_models, fp32_export, tmp_path) -> None:
    got = served(tiny_models["sentiment"], tmp_path, fp32_export)
    ops = set(op_types(tmp_path / ONNX_FILE).values())
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert torch.allclose(got.sum(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(got, reference(tiny_models["sentiment"]), atol=0.05)


def test_keep_fp32_leaves_the_named_modules_unquantized(tiny_models, fp32_export, tmp_path) -> None:
    served(tiny_models["sentiment"], tmp_path, fp32_export, keep_fp32=FFN_OUT)
    ops = op_types(tmp_path / ONNX_FILE)
    kept = [name for name in ops if onnx_build.module_of(name).startswith(FFN_OUT)]
    assert kept, "no node of the kept modules: test is void"
    assert all(ops[name] in {"MatMul", "Add"} for name in kept)
    assert any(op == "MatMulInteger" for name, op in ops.items() if "intermediate" in name)


def test_keep_fp32_naming_no_module_is_refused(fp32_export, tmp_path) -> None:
    with pytest.raises(ValueError, match="matches no node"):
        onnx_build.quantize_int8(fp32_export, tmp_path / "x.onnx", keep_fp32=("bert.no_such_module",))


def test_module_of_maps_node_names_to_module_paths() -> None:
    assert onnx_build.module_of("/bert/encoder/layer.0/output/dense/MatMul") == "bert.encoder.layer.0.output.dense"
    assert onnx_build.module_of("/classifier/Gemm") == "classifier"


def test_missing_graph_and_unknown_engine_are_clear_errors(tiny_models) -> None:
    with pytest.raises(FileNotFoundError, match=r"must carry model\.onnx"):
        load(tiny_models["cola"], settings=Settings(engine="onnxruntime"))
    with pytest.raises(ValueError, match="engine='tensorrt': Input should be 'torch' or 'onnxruntime'"):
        settings_from({"engine": "tensorrt"})


def test_archives_carry_the_graph_only_for_the_onnxruntime_engine(tiny_models, tmp_path) -> None:
    torch_engine = ServingConfig(handler={"engine": "torch", "quantize": True})
    onnx_archive = package(tiny_models["cola"], name="cola", store=tmp_path, version="1.0")
    torch_archive = package(tiny_models["cola"], name="cola", store=tmp_path, version="2.0", serving=torch_engine)
    assert ONNX_FILE in zipfile.ZipFile(onnx_archive).namelist()
    assert ONNX_FILE not in zipfile.ZipFile(torch_archive).namelist()
    # the fp32 weights travel only where a path loads them: the torch engine, or CUDA when asked for
    with_weights = package(tiny_models["cola"], name="cola", store=tmp_path, version="4.0", fp32_weights=True)
    assert WEIGHTS_FILE not in zipfile.ZipFile(onnx_archive).namelist()
    assert WEIGHTS_FILE in zipfile.ZipFile(torch_archive).namelist()
    assert WEIGHTS_FILE in zipfile.ZipFile(with_weights).namelist()
    assert with_weights.stat().st_size > onnx_archive.stat().st_size
    with pytest.raises(PackagingError, match="bad handler settings"):
        package(
            tiny_models["cola"], name="cola", store=tmp_path, version="3.0", serving=ServingConfig(handler={"x": 1})
        )


def test_a_cuda_worker_without_fp32_weights_serves_the_graph_on_the_cpu(
    tiny_models, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive packaged for the CPU (no weights) still serves on a GPU machine: its graph, on the CPU, with one
    warning that says how to package it for CUDA. Nothing touches CUDA on the way, so this runs on any machine."""
    archive = package(tiny_models["cola"], name="cola", store=tmp_path, version="1.0")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(archive).extractall(unpacked)
    settings = Settings(engine="onnxruntime", warmup=False)
    loaded = load(unpacked, settings=settings, device=torch.device("cuda", 0))
    assert loaded.device == torch.device("cpu")
    assert isinstance(loaded.model, OnnxClassifier)
    assert "--fp32-weights" in caplog.text
    expected = predict(load(unpacked, settings=settings), TEXTS, max_length=32)
    assert torch.equal(predict(loaded, TEXTS, max_length=32), expected)


VERBS = ("works", "crashes")  # one token each in the tiny vocabulary: every text has the same length
SIMILAR = [f"the {w} is {a} and the app {v}" for w in ("boy", "cat", "dog") for a in ("good", "bad") for v in VERBS]


def alone_vs_together(loaded: Loaded) -> float:
    """Largest probability change between each text alone and the same text in one batch with the others."""
    together = predict(loaded, SIMILAR, max_length=128)
    alone = torch.cat([predict(loaded, [text], max_length=128) for text in SIMILAR])
    return float((together - alone).abs().max())


def test_static_int8_answers_do_not_depend_on_the_batch_and_dynamic_do(tiny_models, fp32_export, tmp_path) -> None:
    model_dir = tiny_models["sentiment"]
    deltas = {}
    for activations in ("static", "dynamic"):
        settings = Settings(engine="onnxruntime", warmup=False, activations=activations)
        view = onnx_build.served_view(model_dir, tmp_path / activations, settings, fp32=fp32_export)
        loaded = load(view, settings=settings)
        assert len(length_groups([len(loaded.tokenizer(t)["input_ids"]) for t in SIMILAR])) == 1, "not one forward"
        deltas[activations] = alone_vs_together(loaded)
        assert torch.allclose(predict(loaded, TEXTS, max_length=128), reference(model_dir), atol=0.05)
    assert deltas["static"] <= 1e-5
    assert deltas["dynamic"] > 1e-5, "dynamic int8 showed no batch effect: the comparison is void"
    ops = set(op_types(tmp_path / "static" / ONNX_FILE).values())
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= ops
    assert "DynamicQuantizeLinear" not in ops


def test_static_int8_without_calibration_texts_is_refused(tiny_models, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in tiny_models["cola"].iterdir():
        if item.name != onnx_build.CALIBRATION_FILE:
            (model_dir / item.name).symlink_to(item)
    with pytest.raises(PackagingError, match=r"calibration\.json"):
        package(model_dir, name="cola", store=tmp_path / "store", version="1.0")
