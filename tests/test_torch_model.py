"""PyTorch programs: TorchScript and torch.export archives predict as torch computes; pickles are refused."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sluice.errors import ModelLoadError, ModelOutOfMemory, PredictError, UnsafeModelError
from sluice.models import LoadOptions, ModelConfig, TensorConfig, load_model
from torch_support import OomAbove, SequenceNet, direct, save_export, save_torchscript, tiny_net

TINY_YAML = """\
format: torch
inputs: [{name: x, dtype: float32, shape: [-1, 4]}]
outputs:
  - {name: logits, dtype: float32, shape: [-1, 3]}
  - {name: probabilities, dtype: float32, shape: [-1, 3]}
"""
X = np.random.default_rng(3).normal(size=(9, 4)).astype(np.float32)


@dataclass(frozen=True)
class Programs:
    torchscript: Path
    export: Path
    repository: Path


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    root = tmp_path_factory.mktemp("torch")
    net = tiny_net()
    repository = root / "repo"
    (repository / "tiny" / "1").mkdir(parents=True)
    save_torchscript(net, repository / "tiny" / "1" / "model.pt")
    (repository / "tiny" / "model.yaml").write_text(TINY_YAML)
    return Programs(save_torchscript(net, root / "tiny.pt"), save_export(net, root / "tiny.pt2"), repository)


def _declared(width: int = 4, classes: int = 3) -> ModelConfig:
    return ModelConfig(
        inputs=[TensorConfig(name="x", dtype="float32", shape=[-1, width])],
        outputs=[
            TensorConfig(name="logits", dtype="float32", shape=[-1, classes]),
            TensorConfig(name="probabilities", dtype="float32", shape=[-1, classes]),
        ],
    )


def _assert_as_torch(outputs: dict[str, np.ndarray], names: tuple[str, str]) -> None:
    logits, probabilities = direct(tiny_net(), X)
    assert list(outputs) == list(names)
    np.testing.assert_allclose(outputs[names[0]], logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs[names[1]], probabilities, rtol=0, atol=1e-4)


def test_torchscript_in_a_repository_predicts_as_torch(programs: Programs) -> None:
    model = load_model("tiny@1", repository=programs.repository)
    assert (model.source.format, model.concurrency) == ("torch", "threads")
    assert model.signature.describe() == (
        "inputs: x: float32[?, 4] -> outputs: logits: float32[?, 3]; probabilities: float32[?, 3]"
    )
    _assert_as_torch(model.predict_checked({"x": X}), ("logits", "probabilities"))


def test_an_export_program_brings_its_own_signature(programs: Programs) -> None:
    model = load_model(str(programs.export))
    assert model.signature.to_dict() == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "output_0", "dtype": "float32", "shape": [-1, 3]},
            {"name": "output_1", "dtype": "float32", "shape": [-1, 3]},
        ],
    }
    _assert_as_torch(model.predict_checked({"x": X}), ("output_0", "output_1"))


def test_model_yaml_names_an_export_programs_outputs(programs: Programs) -> None:
    model = load_model(str(programs.export), config=_declared())
    _assert_as_torch(model.predict_checked({"x": X}), ("logits", "probabilities"))


def test_model_yaml_that_disagrees_with_the_export_program_names_the_tensor(programs: Programs) -> None:
    config = ModelConfig(inputs=[TensorConfig(name="x", dtype="float64", shape=[-1, 4])])
    with pytest.raises(ModelLoadError) as info:
        load_model(str(programs.export), config=config)
    assert str(info.value) == "input 'x': model.yaml declares x: float64[?, 4], the program gives x: float32[?, 4]"


def test_torchscript_without_declared_inputs_says_where_to_declare_them(programs: Programs) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(programs.torchscript))
    assert str(info.value) == (
        "model tiny.pt: tiny.pt records its inputs' names (x) but not their dtypes and shapes; declare them "
        "under 'inputs:' in model.yaml (name, dtype, shape), or save the model with torch.export.save (.pt2), "
        "which records them"
    )


def test_the_warm_up_call_catches_a_declared_width_the_program_does_not_take(programs: Programs) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(programs.torchscript), config=_declared(width=5))
    assert str(info.value) == (
        "model tiny.pt failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 4x8) "
        "(the warm-up call with inputs x: float32[?, 5]); check 'inputs:' and 'outputs:' in model.yaml"
    )


def test_the_warm_up_call_catches_a_declared_output_shape(programs: Programs) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(programs.torchscript), config=_declared(classes=5))
    assert str(info.value) == (
        "output 'logits': model.yaml declares logits: float32[?, 5], the warm-up call gives logits: float32[?, 3]"
    )


def test_a_pickled_module_is_refused_and_loads_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(tiny_net(), path)
    with pytest.raises(UnsafeModelError) as info:
        load_model(str(path), config=_declared())
    assert str(info.value) == (
        f"{path} was written by torch.save: a pickled torch_support.TinyNet, and loading a pickle runs whatever "
        "code it names. Save the program with torch.export.save (.pt2) or torch.jit.save (.pt) instead, or pass "
        "`trust_pickle=True` if you created this file yourself or fully trust its source."
    )
    assert info.value.params == ("trust_pickle",)
    model = load_model(str(path), config=_declared(), options=LoadOptions(trust_pickle=True))
    _assert_as_torch(model.predict_checked({"x": X}), ("logits", "probabilities"))


def test_a_legacy_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "net.pth"
    torch.save(tiny_net(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeModelError) as info:
        load_model(str(path), config=_declared())
    assert str(info.value).startswith(f"{path} was written by torch.save: a pickle, and loading a pickle runs")


def test_a_state_dict_is_refused_even_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(tiny_net().state_dict(), path)
    message = (
        f"{path} is a state dict saved with torch.save: weights without the program that runs them. "
        "Save the program with torch.export.save (.pt2) or torch.jit.save (.pt) instead."
    )
    for trust in (False, True):
        with pytest.raises(UnsafeModelError) as info:
            load_model(str(path), config=_declared(), options=LoadOptions(trust_pickle=trust))
        assert str(info.value) == message


def test_an_export_archive_with_pickled_weights_is_refused(programs: Programs, tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(programs.export) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(content)
                config["config"]["hidden.weight"]["use_pickle"] = True
                content = json.dumps(config).encode()
            target.writestr(item, content)
    with pytest.raises(UnsafeModelError) as info:
        load_model(str(path))
    assert str(info.value) == (
        f"{path} is a torch.export program, but data/weights/weight_0 in it are pickles, and loading a pickle "
        "runs whatever code it names; export plain tensors, or pass `trust_pickle=True` if you created this "
        "file yourself or fully trust its source."
    )


def test_a_file_that_is_no_torch_archive(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value) == (
        f"{path} is not a PyTorch program: expected a zip archive written by torch.jit.save or torch.export.save"
    )


def test_an_export_program_with_a_fixed_batch_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(tiny_net(), (torch.zeros(2, 4),)), str(path))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value) == (
        f"{path}: input 'x' was exported with a fixed batch size (shape [2, 4]); export it with a dynamic first "
        "dimension, e.g. dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
    )


def test_out_of_memory_reaches_the_engine_as_model_out_of_memory_from_torchs_error(tmp_path: Path) -> None:
    path = tmp_path / "oom.pt"
    torch.save(OomAbove(4), path)
    config = ModelConfig(inputs=[TensorConfig(name="x", dtype="float32", shape=[-1, 4])])
    model = load_model(str(path), config=config, options=LoadOptions(trust_pickle=True))
    assert model.predict_checked({"x": X[:4]})["output"].shape == (4, 4)
    with pytest.raises(ModelOutOfMemory) as info:
        model.predict_checked({"x": X[:5]})
    assert str(info.value) == "oom.pt ran out of memory: a batch of 5 rows does not fit"
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_format_torch_in_model_yaml_names_a_file_of_any_extension(programs: Programs, tmp_path: Path) -> None:
    (tmp_path / "net" / "3").mkdir(parents=True)
    (tmp_path / "net" / "3" / "program.bin").write_bytes(programs.export.read_bytes())
    (tmp_path / "net" / "model.yaml").write_text("format: torch\nartifact: program.bin\n")
    model = load_model("net@3", repository=tmp_path)
    assert (model.source.format, Path(model.source.location).name) == ("torch", "program.bin")
    _assert_as_torch(model.predict_checked({"x": X}), ("output_0", "output_1"))


def test_warm_up_tells_dynamic_output_dimensions_from_fixed_ones(tmp_path: Path) -> None:
    path = save_torchscript(SequenceNet(), tmp_path / "sequence.pt")
    config = ModelConfig(inputs=[TensorConfig(name="steps", dtype="float32", shape=[-1, -1, 4])])
    model = load_model(str(path), config=config)
    assert model.signature.describe() == (
        "inputs: steps: float32[?, ?, 4] -> outputs: mean: float32[?, 4]; scores: float32[?, ?]"
    )
    steps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    outputs = model.predict_checked({"steps": steps})
    np.testing.assert_array_equal(outputs["mean"], steps.mean(axis=1))
    np.testing.assert_array_equal(outputs["scores"], steps.sum(axis=-1))


def test_a_closed_model_lets_go_of_its_program(programs: Programs) -> None:
    model = load_model(str(programs.export))
    model.close()
    with pytest.raises(PredictError) as info:
        model.predict_checked({"x": X})
    assert str(info.value) == "model tiny.pt2 failed: RuntimeError: model tiny.pt2 was closed"
