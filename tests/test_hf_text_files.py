"""Hugging Face model directories: detection, missing files, pickled weights, tasks, the text column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("transformers")

import sluice
from hf_text_support import TextModels, direct_embeddings, documents, text_models
from sluice.batch import JobSpec
from sluice.batch.plan import plan_columns
from sluice.errors import BindError, DataError, ModelLoadError, ModelNotFound, UnsafeModelError
from sluice.models.config import LoadOptions, ModelConfig
from sluice.models.deep.hf import TASKS

__all__ = ["text_models"]


def _copy(source: Path, target: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target)
    for name in without:
        (target / name).unlink()
    return target


def test_missing_tokenizer_file_is_named(text_models: TextModels, tmp_path: Path) -> None:
    directory = _copy(text_models.embedding, tmp_path / "m", without=("tokenizer.json",))
    with pytest.raises(ModelNotFound) as info:
        sluice.load_model(str(directory))
    assert str(info.value) == (
        f"Hugging Face model directory {directory} has no tokenizer.json (the fast tokenizer); nothing is "
        "downloaded, so every file must be in the directory; save the tokenizer with tokenizer.save_pretrained(DIR)"
    )


def test_missing_weights_file_is_named(text_models: TextModels, tmp_path: Path) -> None:
    directory = _copy(text_models.embedding, tmp_path / "m", without=("model.safetensors",))
    with pytest.raises(ModelNotFound) as info:
        sluice.load_model(str(directory))
    assert str(info.value) == (
        f"Hugging Face model directory {directory} has no weights file: expected model.safetensors "
        "(or a sharded model.safetensors.index.json); save the model with save_pretrained(DIR)"
    )


def test_broken_config_json_names_the_file(text_models: TextModels, tmp_path: Path) -> None:
    directory = _copy(text_models.embedding, tmp_path / "m")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=rf"^{directory / 'config.json'} is not a readable JSON file"):
        sluice.load_model(str(directory))


def _pickled(text_models: TextModels, directory: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    _copy(text_models.embedding, directory, without=("model.safetensors",))
    torch.save(load_file(str(text_models.embedding / "model.safetensors")), directory / "pytorch_model.bin")
    return directory


def test_pickled_weights_need_trust(text_models: TextModels, tmp_path: Path) -> None:
    directory = _pickled(text_models, tmp_path / "m")
    with pytest.raises(UnsafeModelError) as info:
        sluice.load_model(str(directory))
    message = str(info.value)
    assert message.startswith(f"{directory / 'pytorch_model.bin'} is a pickle (PyTorch's torch.save format)")
    assert "pass `trust_pickle=True`" in message
    assert info.value.params == ("trust_pickle",)
    trusted = sluice.load_model(str(directory), options=LoadOptions(trust_pickle=True))
    texts = documents(4)
    got = trusted.predict_checked({"text": np.array(texts, dtype=object)})["embedding"]
    assert np.abs(got - direct_embeddings(text_models.embedding, texts)).max() <= 1e-4


def test_pickle_refused_from_the_command_line(text_models: TextModels, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sluice.cli.main import app

    directory = _pickled(text_models, tmp_path / "m")
    pa_path = tmp_path / "docs.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["mi ne"]}), pa_path)
    result = CliRunner().invoke(app, ["predict", "-m", str(directory), "-i", str(pa_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "is a pickle (PyTorch's torch.save format)" in result.output
    assert "pass --trust-pickle (or opt the repository in" in result.output


def test_task_from_config_yaml_and_unknown(text_models: TextModels, tmp_path: Path) -> None:
    # the classifier's checkpoint loaded as an encoder: feature-extraction by model.yaml's task
    encoder = sluice.load_model(str(text_models.classifier), config=ModelConfig(task="feature-extraction"))
    assert [s.name for s in encoder.signature.outputs] == ["embedding"]
    with pytest.raises(ModelLoadError) as info:
        sluice.load_model(str(text_models.embedding), config=ModelConfig(task="summarization"))
    assert str(info.value) == (
        f"unknown `task` 'summarization' for {text_models.embedding}: the known tasks are "
        "feature-extraction, image-classification, text-classification"
    )
    directory = _copy(text_models.embedding, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"cannot tell the task .* \(\['BertForMaskedLM'\]\); name it with `task`"):
        sluice.load_model(str(directory))


def test_task_table_names_the_image_loader() -> None:
    assert TASKS["image-classification"] == "sluice.models.deep.hf_image:load_image_classifier"


def test_repository_version_directory_and_model_yaml(text_models: TextModels, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(text_models.classifier, root / "docs" / "1")
    (root / "docs" / "model.yaml").write_text("task: feature-extraction\ntext: {pooling: cls, normalize: true}\n")
    model = sluice.load_model("docs@1", repository=root)
    assert (model.source.format, model.source.display_name) == ("hf", "docs@1")
    out = model.predict_checked({"text": np.array(["mi ne ru"], dtype=object)})["embedding"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def _plan(model: sluice.Model, schema: pa.Schema, **fields: object):  # type: ignore[no-untyped-def]
    spec = JobSpec(model="m", input="i", output="o", **fields)  # type: ignore[arg-type]
    return plan_columns(spec, model, schema, text_input=False)


def test_text_column_binding(text_models: TextModels) -> None:
    model = sluice.load_model(str(text_models.embedding))
    one = pa.schema([("id", pa.int64()), ("body", pa.string())])
    assert _plan(model, one).bind.columns == ["body"]
    several = pa.schema([("id", pa.int64()), ("title", pa.string()), ("body", pa.large_string())])
    with pytest.raises(BindError) as info:
        _plan(model, several)
    assert str(info.value) == (
        "model input 'text' takes one text column, the only string column not passed through; the data has "
        "2 (title, body) (columns: ['id', 'title', 'body']): name it with `text_column`"
    )
    assert _plan(model, several, text_column="body").bind.columns == ["body"]
    assert _plan(model, several, include=["title"]).bind.columns == ["body"]  # title is passed through
    with pytest.raises(BindError, match=r"the data has none \(columns: \['id', 'x'\]\)"):
        _plan(model, pa.schema([("id", pa.int64()), ("x", pa.float64())]))
    with pytest.raises(DataError) as missing:
        _plan(model, one, text_column="text")
    assert str(missing.value) == "`text_column` 'text' is not a column of the input; columns: ['id', 'body']"
    with pytest.raises(DataError) as wrong:
        _plan(model, one, text_column="id")
    assert str(wrong.value) == "`text_column` 'id' has type int64; expected a string column"


def test_max_length_beyond_the_position_embeddings(text_models: TextModels) -> None:
    with pytest.raises(ModelLoadError) as info:
        sluice.load_model(str(text_models.embedding), config=ModelConfig(text={"max_length": 65}))  # type: ignore[arg-type]
    assert str(info.value) == "`max_length` 65 is more than the model's max_position_embeddings 64"
