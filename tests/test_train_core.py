"""Data-parallel training: parity with single-process training, strategies, crash and resume.

The distributed runs use 2 gloo processes on 127.0.0.1 over a small labelled table; each run is
spawned once (a module fixture where several tests share it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from sluice.errors import DataError, SluiceError  # noqa: E402
from sluice.models.signature import default_feature_columns  # noqa: E402
from sluice.train import TrainConfig  # noqa: E402
from sluice.train.data import (  # noqa: E402
    TRAINING_SIGNATURE,
    epoch_order,
    load_training_data,
    plan_columns,
    rank_rows,
    split_rows,
    validation_rows,
)
from sluice.train.launch import RunOptions, TrainResult, TrainStart, launch  # noqa: E402
from sluice.train.model import build_mlp, step_loss  # noqa: E402

TOL: dict[str, Any] = {"rtol": 1.3e-6, "atol": 5e-5}  # DDP's own parity tolerance
ROWS = 310  # 31 validation rows (split 15/16 over two ranks), 279 training rows: 4 steps of 64
STEPS = 8  # 2 epochs


def labelled_table(n: int, features: int = 6, seed: int = 0, noise: float = 0.5) -> pa.Table:
    """``id``, ``f0..``: float32 normal; ``label`` = (x @ w + noise > 0) as int64. Deterministic."""
    rng = np.random.default_rng([seed, n])
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = np.random.default_rng(99).normal(size=features)
    y = (x @ w + rng.normal(scale=noise, size=n) > 0).astype(np.int64)
    columns: dict[str, Any] = {"id": np.arange(n)}
    columns.update({f"f{j}": x[:, j] for j in range(features)})
    columns["label"] = y
    return pa.table(columns)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    table = labelled_table(ROWS)
    pq.write_table(table.slice(0, 200), root / "part-0.parquet")  # two uneven files
    pq.write_table(table.slice(200), root / "part-1.parquet")
    return root


def config(data: Path, checkpoints: Path, **fields: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data": str(data),
        "target": "label",
        "model_name": "m",
        "exclude": ["id"],
        "nproc": 2,
        "epochs": 2,
        "global_batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.2,
        "hidden": [16, 8],
        "seed": 3,
        "checkpoint_dir": str(checkpoints),
    }
    return TrainConfig.build(**{**base, **fields})


def assert_same_parameters(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL)


@pytest.fixture(scope="module")
def ddp_events() -> list[object]:
    return []


@pytest.fixture(scope="module")
def ddp_run(small_data: Path, tmp_path_factory: pytest.TempPathFactory, ddp_events: list[object]) -> TrainResult:
    """2 ranks, 2 micro-batches per step (no_sync), replicas compared at every step."""
    cfg = config(small_data, tmp_path_factory.mktemp("ck"), grad_accumulation=2)
    return launch(cfg, ddp_events.append, options=RunOptions(check_replicas=True))


def test_ddp_equals_single_process_training_on_the_global_batch(ddp_run: TrainResult, small_data: Path) -> None:
    cfg = ddp_run.config
    data = load_training_data(cfg)
    model = build_mlp(len(data.features), cfg.hidden, 2, cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    steps_per_epoch = len(x) // cfg.global_batch_size
    for epoch in range(cfg.epochs):
        order = epoch_order(len(x), cfg.seed, epoch)
        for k in range(steps_per_epoch):
            rows = torch.from_numpy(order[k * cfg.global_batch_size : (k + 1) * cfg.global_batch_size])
            step_loss("classification", model(x[rows]), y[rows]).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert len(ddp_run.history.steps) == STEPS
    assert_same_parameters(ddp_run.state_dict, model.state_dict())


def test_world_size_does_not_change_the_result(ddp_run: TrainResult, small_data: Path, tmp_path: Path) -> None:
    single = launch(config(small_data, tmp_path, nproc=1))
    assert single.world_size == 1 and ddp_run.world_size == 2
    assert_same_parameters(ddp_run.state_dict, single.state_dict)


def test_ddp_history_replicas_and_accounting(ddp_run: TrainResult) -> None:
    params = sum(v.numel() for v in ddp_run.state_dict.values())
    steps = ddp_run.history.steps
    assert [s.step for s in steps] == list(range(1, STEPS + 1))
    assert all(s.synced and s.replica_divergence == 0.0 for s in steps)
    assert all(s.grad_bytes == params * 4 for s in steps)  # one fp32 all-reduce per step, not per micro-batch
    assert all(s.step_s > 0 and 0 <= s.compute_s <= s.step_s and s.comm_s > 0 for s in steps)
    epochs = ddp_run.history.epochs
    assert [e.epoch for e in epochs] == [1, 2] and all(e.replica_divergence == 0.0 for e in epochs)
    assert epochs[-1].metric_name == "accuracy" and ddp_run.validation_metric == epochs[-1].val_metric
    assert 0.5 < ddp_run.validation_metric <= 1.0
    assert ddp_run.validation_rows == 31 and ddp_run.train_rows == 279
    assert ddp_run.class_labels == (0, 1) and ddp_run.feature_names == tuple(f"f{j}" for j in range(6))
    assert Path(ddp_run.checkpoint_path).exists()


def test_rank_zero_reports_progress(ddp_run: TrainResult, ddp_events: list[object]) -> None:
    start, *rest = ddp_events
    assert isinstance(start, TrainStart) and start.steps_per_epoch == 4 and start.world_size == 2
    assert rest == [*ddp_run.history.steps[:4], ddp_run.history.epochs[0], *ddp_run.history.steps[4:],
                    ddp_run.history.epochs[1]]  # fmt: skip


def test_inference_module_applies_the_scaling(ddp_run: TrainResult, small_data: Path) -> None:
    raw = labelled_table(ROWS)
    x = np.column_stack([raw.column(f).to_numpy() for f in ddp_run.feature_names])
    module = ddp_run.build_module()
    probabilities = module(torch.from_numpy(x)).detach()
    mlp = build_mlp(6, ddp_run.hidden, 2, ddp_run.config.seed)
    mlp.load_state_dict(ddp_run.state_dict)
    scaled = torch.from_numpy((x - ddp_run.feature_mean) / ddp_run.feature_std)
    torch.testing.assert_close(probabilities, torch.softmax(mlp(scaled), dim=1).detach(), rtol=1e-5, atol=1e-6)


def test_powersgd_is_exact_before_its_start_iteration(ddp_run: TrainResult, small_data: Path, tmp_path: Path) -> None:
    result = launch(config(small_data, tmp_path, strategy="powersgd", powersgd_start_iter=STEPS + 1))
    assert_same_parameters(ddp_run.state_dict, result.state_dict)
    assert [s.grad_bytes for s in result.history.steps] == [s.grad_bytes for s in ddp_run.history.steps]


def test_localsgd_with_period_one_and_plain_sgd_equals_ddp(
    ddp_run: TrainResult, small_data: Path, tmp_path: Path
) -> None:
    cfg = config(small_data, tmp_path, strategy="localsgd", localsgd_period=1, localsgd_start_iter=0)
    assert_same_parameters(ddp_run.state_dict, launch(cfg).state_dict)


@pytest.mark.parametrize(
    "fields",
    [
        {"strategy": "fp16"},
        {"strategy": "powersgd", "powersgd_start_iter": 3, "powersgd_rank": 2},
        {"strategy": "localsgd", "localsgd_period": 3, "localsgd_start_iter": 2, "optimizer": "adam", "lr": 0.01},
    ],
    ids=["fp16", "powersgd", "localsgd"],
)
def test_replicas_are_identical_at_every_synchronization_point(
    small_data: Path, tmp_path: Path, fields: dict[str, Any]
) -> None:
    result = launch(config(small_data, tmp_path, **fields), options=RunOptions(check_replicas=True))
    steps = result.history.steps
    params = sum(v.numel() for v in result.state_dict.values())
    synced = [s for s in steps if s.synced]
    assert synced and all(s.replica_divergence == 0.0 for s in synced)
    assert all(e.replica_divergence == 0.0 for e in result.history.epochs)
    if fields["strategy"] == "fp16":
        assert all(s.grad_bytes == params * 2 for s in steps)
    elif fields["strategy"] == "powersgd":
        assert [s.grad_bytes == params * 4 for s in steps[:3]] == [True] * 3
        assert all(0 < s.grad_bytes < params * 4 for s in steps[3:])
        ratio = result.history.epochs[-1].compression_ratio
        assert ratio is not None and ratio > 1
    else:
        assert [s.synced for s in steps] == [True, True, True, False, False, True, False, False]
        assert any((s.replica_divergence or 0.0) > 0 for s in steps if not s.synced)
        assert [s.grad_bytes for s in steps][2:5] == [params * 4, 0, 0]  # averaging, then local steps


def test_a_killed_rank_fails_fast_and_resume_continues_the_run(
    ddp_run: TrainResult, small_data: Path, tmp_path: Path
) -> None:
    cfg = config(small_data, tmp_path, grad_accumulation=2)
    started = time.monotonic()
    with pytest.raises(SluiceError, match="rank 1 died"):
        launch(cfg, options=RunOptions(exit_at_step=(1, 6)))
    assert time.monotonic() - started < 30
    assert (tmp_path / "checkpoint.pt").exists()  # epoch 1 was saved before the crash
    resumed = launch(cfg.model_copy(update={"resume": True}))
    assert resumed.resumed_from_epoch == 1
    assert [s.step for s in resumed.history.steps] == list(range(1, STEPS + 1))
    assert_same_parameters(ddp_run.state_dict, resumed.state_dict)


# -- data ----------------------------------------------------------------------------------


def test_task_and_classes_follow_the_target_type(tmp_path: Path) -> None:
    table = labelled_table(100)
    y = table.column("label").to_numpy()
    kinds = {
        "string": (pa.array(np.where(y == 1, "yes", "no")), ("no", "yes")),
        "bool": (pa.array(y == 1), (False, True)),
    }
    for name, (column, classes) in kinds.items():
        pq.write_table(table.set_column(7, "label", column), tmp_path / f"{name}.parquet")
        cfg = TrainConfig.build(data=str(tmp_path / f"{name}.parquet"), target="label", model_name="m", exclude=["id"])
        data = load_training_data(cfg)
        assert data.task == "classification" and data.classes == classes
    value = (table.column("f0").to_numpy() * 10 + 100).astype(np.float64)
    pq.write_table(table.set_column(7, "label", pa.array(value)), tmp_path / "reg.parquet")
    cfg = TrainConfig.build(data=str(tmp_path / "reg.parquet"), target="label", model_name="m", features=["f1", "f0"])
    data = load_training_data(cfg)
    assert data.task == "regression" and data.classes == () and data.features == ("f1", "f0")
    assert abs(data.target_mean - 100) < 3 and abs(float(data.y_train.mean())) < 1e-5
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5) and np.allclose(data.x_train.std(axis=0), 1, atol=1e-3)


def test_csv_with_bad_and_missing_values(tmp_path: Path) -> None:
    lines = ["id,f0,f1,label"] + [f"{i},{i / 7},{i % 3},{'ab'[i % 2]}" for i in range(20)]
    lines += ["20,oops,2.0,b", "21,,1.0,a", "22,0.5,0.5,"]  # unparseable, missing feature, missing target
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig.build(data=str(tmp_path / "t.csv"), target="label", model_name="m", exclude=["id"],
                            nproc=1, global_batch_size=1, validation_fraction=0.3)  # fmt: skip
    data = load_training_data(cfg)
    assert data.features == ("f0", "f1") and data.classes == ("a", "b")
    assert data.dropped_rows == 3 and len(data.x_train) + len(data.x_val) == 20


def test_training_binds_its_features_through_the_signature(tmp_path: Path) -> None:
    from decimal import Decimal

    table = pa.table(
        {
            "id": pa.array(range(6), pa.int64()),
            "name": [f"n{i}" for i in range(6)],
            "flag": [True, False, True, False, True, False],
            "price": pa.array([Decimal(f"{i}.25") for i in range(6)], pa.decimal128(9, 2)),
            "x": pa.array([0.5, None, 2.5, float("inf"), 4.5, 5.5], pa.float32()),
            "label": [0, 1, 0, 1, 0, 1],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    cfg = TrainConfig.build(data=str(tmp_path / "t.parquet"), target="label", model_name="m", exclude=["id"],
                            nproc=1, global_batch_size=1, validation_fraction=0.25)  # fmt: skip
    plan = plan_columns(cfg)
    assert plan.features == ("flag", "price", "x")
    assert plan.features == tuple(default_feature_columns(plan.schema, {"id", "label"}))
    assert plan.bind == TRAINING_SIGNATURE.plan(plan.schema, list(plan.features), allow_nan=True)
    data = load_training_data(cfg, plan)
    assert data.dropped_rows == 2  # row 1: x is missing; row 3: x is infinite
    raw = np.array([[1, 0.25, 0.5], [1, 2.25, 2.5], [1, 4.25, 4.5], [0, 5.25, 5.5]])
    assert len(data.x_train) + len(data.x_val) == 4
    restored = np.concatenate([data.x_train, data.x_val]) * data.std + data.mean
    np.testing.assert_allclose(np.sort(restored, axis=0), np.sort(raw, axis=0), rtol=1e-6)
    with pytest.raises(DataError, match=r"^feature columns must be numeric; \['name'\] are not$"):
        plan_columns(cfg.model_copy(update={"features": ["x", "name"]}))


def test_user_errors_surface_before_any_process_starts(small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no target column 'nope'"):
        launch(config(small_data, tmp_path, target="nope"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        launch(config(small_data, tmp_path, nproc=1, global_batch_size=512))
    with pytest.raises(DataError, match="no feature column"):
        plan_columns(config(small_data, tmp_path, features=["f0", "zz"]))


def test_batches_and_splits_do_not_depend_on_the_world_size() -> None:
    train, val = split_rows(101, 0.2, seed=5)
    assert len(val) == 20 and sorted([*train, *val]) == list(range(101))
    assert np.array_equal(split_rows(101, 0.2, seed=5)[1], val) and not np.array_equal(split_rows(101, 0.2, 6)[1], val)
    order = epoch_order(100, seed=1, epoch=2)
    assert np.array_equal(order, epoch_order(100, 1, 2)) and not np.array_equal(order, epoch_order(100, 1, 3))
    for world in (1, 2, 4):
        parts = [rank_rows(order, 1, 32, rank, world) for rank in range(world)]
        assert np.array_equal(np.concatenate(parts), order[32:64])
    assert [len(validation_rows(31, r, 2)) for r in range(2)] == [15, 16]


def test_importing_sluice_train_does_not_import_torch() -> None:
    code = "import sys, sluice, sluice.train; sluice.train.TrainConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- convergence -----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_strategy_reaches_the_accuracy_of_ddp(tmp_path: Path) -> None:
    table = labelled_table(12_000, features=32, seed=1, noise=2.0)
    pq.write_table(table, tmp_path / "demo.parquet", row_group_size=4096)
    accuracy = {}
    for strategy in ("ddp", "fp16", "powersgd", "localsgd"):
        cfg = config(tmp_path / "demo.parquet", tmp_path / strategy, strategy=strategy, optimizer="adam", lr=3e-3,
                     epochs=4, global_batch_size=256, hidden=[64, 64], validation_fraction=0.25,
                     powersgd_start_iter=10, localsgd_start_iter=10, localsgd_period=4)  # fmt: skip
        accuracy[strategy] = launch(cfg).validation_metric
    assert accuracy["ddp"] > 0.75, accuracy
    for strategy in ("fp16", "powersgd", "localsgd"):
        assert abs(accuracy[strategy] - accuracy["ddp"]) <= 0.01, accuracy
