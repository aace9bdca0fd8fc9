"""Model references: the repository (names, versions, labels), files, and the adapters behind them."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io as sio

from sluice.errors import ConfigError, ModelLoadError, ModelNotFound, UnsafeModelError
from sluice.models import LoadOptions, ModelConfig, ModelRepository, load_model, resolve_model
from support import FEATURES, invoke, make_table, onnx_predict, read_jsonl, write_table


@pytest.fixture
def repo(tmp_path: Path, models) -> Path:
    """lr: versions 1-3, stable -> 2, canary -> 3 (3 is the ZipMap export); plain: 1-2, no labels."""
    root = tmp_path / "repo"
    for version in (1, 2):
        (root / "lr" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "lr" / str(version) / "model.onnx")
    (root / "lr" / "3").mkdir()
    shutil.copy(models.zipmap_onnx, root / "lr" / "3" / "model.onnx")
    (root / "lr" / "model.yaml").write_text("labels:\n  stable: 2\n  canary: 3\n")
    for version in (1, 2):
        (root / "plain" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "plain" / str(version) / "lr.onnx")
    return root


@pytest.mark.parametrize(
    ("ref", "version"),
    [("lr", 2), ("lr@1", 1), ("lr@2", 2), ("lr@3", 3), ("lr@stable", 2), ("lr@canary", 3), ("lr@latest", 3)],
)
def test_resolve_versions_and_labels(repo: Path, ref: str, version: int) -> None:
    source = resolve_model(ref, repo)
    assert source.format == "onnx"
    assert (source.name, source.version) == ("lr", version)
    assert source.location == str(repo / "lr" / str(version) / "model.onnx")
    assert source.display_name == f"lr@{version}"


def test_name_without_stable_label_is_latest(repo: Path) -> None:
    source = resolve_model("plain", repo)
    assert source.version == 2
    assert source.location == str(repo / "plain" / "2" / "lr.onnx")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "no model named 'nope' in repository {repo} (models there: lr, plain)"),
        ("lr@9", "model 'lr' has no version 9; versions: [1, 2, 3]"),
        ("lr@beta", "model 'lr' has no label 'beta'; labels: ['canary', 'stable']"),
        ("plain@beta", "model 'plain' has no label 'beta'; labels: none"),
        ("lr@", "model reference 'lr@': '@' must be followed by a version number or a label"),
    ],
)
def test_unknown_references(repo: Path, ref: str, message: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(ref, repo)
    assert str(info.value) == message.format(repo=repo)


def test_label_to_missing_version(repo: Path) -> None:
    (repo / "lr" / "model.yaml").write_text("labels:\n  stable: 7\n")
    with pytest.raises(ModelNotFound) as info:
        resolve_model("lr@stable", repo)
    assert str(info.value) == "label 'stable' of model 'lr' points to missing version 7"


def test_model_without_versions(repo: Path) -> None:
    (repo / "empty").mkdir()
    with pytest.raises(ModelNotFound) as info:
        resolve_model("empty", repo)
    assert str(info.value) == f"model 'empty' in {repo} has no version directories (1/, 2/, …)"


def test_version_with_two_model_files(repo: Path, models) -> None:
    shutil.copy(models.skops, repo / "plain" / "2" / "other.skops")
    with pytest.raises(ModelNotFound) as info:
        resolve_model("plain@2", repo)
    assert "expected one model file" in str(info.value)
    assert "found lr.onnx, other.skops; set 'artifact' in model.yaml" in str(info.value)
    (repo / "plain" / "model.yaml").write_text("artifact: other.skops\n")
    assert resolve_model("plain@2", repo).format == "sklearn"


def test_invalid_model_yaml(repo: Path) -> None:
    (repo / "lr" / "model.yaml").write_text("labels: {stable: 1}\nunknown_key: 3\n")
    with pytest.raises(ConfigError) as info:
        resolve_model("lr", repo)
    assert str(info.value) == f"{repo / 'lr' / 'model.yaml'}: unknown_key: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        (
            "{policy: adaptive, max_queue_delay_us: 10}",
            "batching: max_queue_delay_us applies to policy 'fixed'; remove it or set policy: fixed",
        ),
        (
            "{policy: fixed, target_p99_ms: 5}",
            "batching: target_p99_ms applies to policy 'adaptive'; a fixed policy takes max_queue_delay_us",
        ),
        ("{policy: greedy}", "batching.policy: Input should be 'adaptive' or 'fixed'"),
    ],
)
def test_invalid_batching_settings_are_named(repo: Path, batching: str, message: str) -> None:
    (repo / "lr" / "model.yaml").write_text(f"batching: {batching}\n")
    with pytest.raises(ConfigError) as info:
        resolve_model("lr", repo)
    assert str(info.value) == f"{repo / 'lr' / 'model.yaml'}: {message}"


@pytest.mark.parametrize("name", ["../x", "a/../../b", "..", ".hidden", "x/y", "a..b/../c"])
def test_repository_rejects_names_that_escape(repo: Path, name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        ModelRepository(repo).resolve(name)
    assert f"model reference {name!r} is not a valid name" in str(info.value)


def test_escaping_names_never_load_a_model_outside_the_root(tmp_path: Path, repo: Path, models, monkeypatch) -> None:
    outside = tmp_path / "x" / "1"
    outside.mkdir(parents=True)
    shutil.copy(models.onnx, outside / "model.onnx")
    monkeypatch.chdir(repo)
    for ref in ("../x", "a/../../x", str(tmp_path / "x"), "../x@1"):
        with pytest.raises(ModelNotFound):
            resolve_model(ref, repo)


def test_absolute_path_given_as_name(repo: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(str(repo / "lr"), repo)
    assert str(info.value) == f"model file {repo / 'lr'} does not exist"
    with pytest.raises(ModelNotFound) as info:
        ModelRepository(repo).resolve(str(repo / "lr"))
    assert "is not a valid name" in str(info.value)


def test_symlink_out_of_the_repository_is_rejected(tmp_path: Path, repo: Path, models) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "1").mkdir(parents=True)
    shutil.copy(models.onnx, outside / "1" / "model.onnx")
    (repo / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelNotFound) as info:
        resolve_model("evil", repo)
    assert str(info.value) == f"model name 'evil' resolves outside the repository {repo}"


def test_repository_from_environment(repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLUICE_REPOSITORY", str(repo))
    assert resolve_model("lr@1").location == str(repo / "lr" / "1" / "model.onnx")
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert "lr" in result.stdout
    assert "1, 2, 3" in result.stdout
    assert "canary→3, stable→2" in result.stdout
    assert "plain" in result.stdout


def test_default_repository_is_models_in_cwd(tmp_path: Path, repo: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLUICE_REPOSITORY", raising=False)
    repo.rename(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("plain").location == str(Path("models").resolve() / "plain" / "2" / "lr.onnx")


def test_cli_predict_with_repository_reference(tmp_path: Path, repo: Path, models) -> None:
    table = make_table(6)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", "lr@canary", "-r", repo, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id", "-q",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column_names == ["id", "output_label", "output_probability"]
    assert part.column("output_label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()
    assert '"model": "lr@3"' in result.stdout


def test_models_show(repo: Path) -> None:
    result = invoke("models", "show", "lr@1", "-r", repo)
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()]
    assert "lr@1 (onnx, threads)" in lines
    assert "input X float32 [-1, 4]" in lines
    assert "output label int64 [-1]" in lines
    assert "output probabilities float32 [-1, 2]" in lines


def test_models_show_unknown(repo: Path) -> None:
    result = invoke("models", "show", "nope", "-r", repo)
    assert result.exit_code == 2
    assert "error: no model named 'nope'" in result.stderr
    assert "Traceback" not in result.output


def test_publish_adds_next_version(tmp_path: Path, repo: Path, models) -> None:
    repository = ModelRepository(repo)
    assert repository.publish("plain", models.onnx) == 3
    assert repository.versions("plain") == [1, 2, 3]
    assert repository.publish("fresh", models.onnx, ModelConfig(labels={"stable": 1})) == 1
    assert resolve_model("fresh", repo).location == str(repo / "fresh" / "1" / "lr.onnx")
    assert sorted(p.name for p in (repo / "fresh").iterdir()) == ["1", "model.yaml"]


# -- model files ---------------------------------------------------------------------------


def test_file_path_model(models) -> None:
    model = load_model(str(models.onnx))
    assert model.source.display_name == "lr.onnx"
    assert model.signature.describe() == (
        "inputs: X: float32[?, 4] -> outputs: label: int64[?]; probabilities: float32[?, 2]"
    )


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(str(tmp_path / "missing.onnx"))
    assert str(info.value) == f"model file {tmp_path / 'missing.onnx'} does not exist"


def test_unknown_model_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ModelNotFound) as info:
        resolve_model(str(path))
    assert str(info.value) == (
        f"cannot tell the format of model file {path}: "
        "expected one of .joblib, .json, .onnx, .pickle, .pkl, .pt, .pt2, .pth, .skops, .txt, .ubj"
    )


def test_corrupt_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value).startswith(f"ONNX Runtime cannot load {path}: ")


def test_zipmap_model_signature_is_plain_tensors(models) -> None:
    model = load_model(str(models.zipmap_onnx))
    outputs = {s.name: s for s in model.signature.outputs}
    assert set(outputs) == {"output_label", "output_probability"}
    assert outputs["output_probability"].dtype == np.dtype("float32")
    assert len(outputs["output_probability"].shape) == 2
    x = make_table(5)
    got = model.predict({"X": np.column_stack([x.column(f).to_numpy() for f in FEATURES])})
    want = onnx_predict(models.onnx, x)
    assert isinstance(got["output_probability"], np.ndarray)
    np.testing.assert_array_equal(got["output_probability"], want["probabilities"])


# -- scikit-learn ----------------------------------------------------------------------------


def _sklearn_run(tmp_path: Path, model: Path, *extra: str):
    table = make_table(8)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", model, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id",
        "--output-format", "jsonl", "-q", *extra,
    )  # fmt: skip
    return table, out, result


def test_skops_model(tmp_path: Path, models) -> None:
    table, out, result = _sklearn_run(tmp_path, models.skops)
    assert result.exit_code == 0, result.output
    estimator = sio.load(models.skops)
    x = np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in FEATURES])
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [r["label"] for r in rows] == estimator.predict(x).tolist()
    np.testing.assert_allclose([r["probabilities"] for r in rows], estimator.predict_proba(x), rtol=1e-12)


def test_forest_skops_needs_trust_type(tmp_path: Path, models) -> None:
    _, _, result = _sklearn_run(tmp_path, models.forest_skops)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert message == (
        f"error: {models.forest_skops} contains types that skops does not trust by default: "
        "sklearn.tree._tree.Tree. Review them; if you trust this file, list them under 'trusted_types' "
        "in model.yaml or pass --trust-type for each."
    )
    table, out, result = _sklearn_run(tmp_path, models.forest_skops, "--trust-type", "sklearn.tree._tree.Tree")
    assert result.exit_code == 0, result.output
    forest = sio.load(models.forest_skops, trusted=["sklearn.tree._tree.Tree"])
    x = np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in FEATURES])
    assert [r["label"] for r in read_jsonl(out / "part-00000.jsonl")] == forest.predict(x).tolist()


def test_forest_trusted_in_model_yaml(tmp_path: Path, models) -> None:
    root = tmp_path / "repo"
    (root / "forest" / "1").mkdir(parents=True)
    shutil.copy(models.forest_skops, root / "forest" / "1" / "model.skops")
    (root / "forest" / "model.yaml").write_text("trusted_types: [sklearn.tree._tree.Tree]\n")
    model = load_model("forest", root)
    assert [s.name for s in model.signature.outputs] == ["label", "probabilities"]


@pytest.mark.parametrize("kind", ["pickle", "joblib"])
def test_pickle_refused_without_trust(tmp_path: Path, models, kind: str) -> None:
    path = getattr(models, kind)
    _, _, result = _sklearn_run(tmp_path, path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert " ".join(result.stderr.split()) == (
        f"error: {path} is a pickle/joblib file, and loading one runs whatever code it contains. "
        "Save the model with skops (skops.io.dump) instead, or pass --trust-pickle if you created "
        "this file yourself or fully trust its source."
    )
    with pytest.raises(UnsafeModelError):
        load_model(str(path))


@pytest.mark.parametrize("kind", ["pickle", "joblib"])
def test_pickle_accepted_with_trust(tmp_path: Path, models, kind: str) -> None:
    table, out, result = _sklearn_run(tmp_path, getattr(models, kind), "--trust-pickle")
    assert result.exit_code == 0, result.output
    expected = load_model(str(models.skops)).predict(
        {"input": np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in FEATURES])}
    )
    assert [r["label"] for r in read_jsonl(out / "part-00000.jsonl")] == expected["label"].tolist()
    assert load_model(str(getattr(models, kind)), options=LoadOptions(trust_pickle=True)).source.format == "pickle"


def test_sklearn_feature_names_are_default_features(tmp_path: Path, models) -> None:
    model = load_model(str(models.named_skops))
    assert model.default_features == FEATURES
    table = make_table(5).select(["f3", "id", "f1", "name", "f0", "f2"])
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.named_skops, "-i", tmp_path / "in.parquet", "-o", out, "--include", "id,f3", "-q"
    )
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    estimator = sio.load(models.named_skops)
    x = table.select(FEATURES).to_pandas().astype(np.float64)
    assert part.column("label").to_pylist() == estimator.predict(x).tolist()


def test_sklearn_predict_with_feature_names_emits_no_warning(models) -> None:
    model = load_model(str(models.named_skops))
    x = np.column_stack([make_table(3).column(f).to_numpy().astype(np.float64) for f in FEATURES])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = model.predict({"input": x})
    assert outputs["probabilities"].shape == (3, 2)


def test_allow_nan_in_model_yaml(tmp_path: Path, models) -> None:
    root = tmp_path / "repo"
    (root / "lr" / "1").mkdir(parents=True)
    shutil.copy(models.onnx, root / "lr" / "1" / "model.onnx")
    (root / "lr" / "model.yaml").write_text("allow_nan: true\nfeatures: [f0, f1, f2, f3]\n")
    table = make_table(4)
    f0 = table.column("f0").to_numpy().copy()
    f0[1] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", "lr", "-r", root, "-i", tmp_path / "in.parquet", "-o", out, "--include", "id", "-q"
    )
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column("id").to_pylist() == [0, 1, 2, 3]
    assert not (out / "_errors" / "errors-00000.jsonl").exists()


def test_features_from_model_yaml(tmp_path: Path, models) -> None:
    root = tmp_path / "repo"
    (root / "lr" / "1").mkdir(parents=True)
    shutil.copy(models.onnx, root / "lr" / "1" / "model.onnx")
    (root / "lr" / "model.yaml").write_text("features: [f3, f2, f1, f0]\n")
    table = make_table(6)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", "lr", "-r", root, "-i", tmp_path / "in.parquet", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column_names == ["label", "probabilities"]
    want = onnx_predict(models.onnx, table, features=["f3", "f2", "f1", "f0"])
    assert part.column("label").to_pylist() == want["label"].tolist()
