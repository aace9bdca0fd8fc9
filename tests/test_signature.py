"""Signature planning and binding, tensors back to columns, and per-row casting failures."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sluice.errors import BindError, PredictError
from sluice.models.casting import RowFailures, cast_column, parse_numeric
from sluice.models.signature import Signature, TensorSpec, default_feature_columns, is_value_type, tensor_to_arrow

F32 = np.dtype("float32")
F64 = np.dtype("float64")
CLASSIFIER = Signature(
    (TensorSpec("X", F32, (-1, 4)),),
    (TensorSpec("label", np.dtype("int64"), (-1,)), TensorSpec("probabilities", F32, (-1, 2))),
)


def _batch(**columns: object) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(columns)


def _features_batch(n: int = 3) -> pa.RecordBatch:
    return _batch(
        id=pa.array(range(n), pa.int64()),
        name=[f"r{i}" for i in range(n)],
        **{f"f{j}": pa.array([float(i * 10 + j) for i in range(n)], pa.float64()) for j in range(4)},
    )


# -- plan ----------------------------------------------------------------------------------


def test_plan_missing_column() -> None:
    schema = _features_batch().schema
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(schema, ["f0", "f1", "f2", "f9"])
    assert str(info.value) == (
        "model input 'X' needs column 'f9', which the data does not have; "
        "its columns are ['id', 'name', 'f0', 'f1', 'f2', 'f3']"
    )


def test_plan_width_mismatch_names_counts() -> None:
    schema = _features_batch().schema
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(schema, ["f0", "f1", "f2"])
    assert str(info.value) == "model input 'X' takes 4 features per row but 3 columns were given (f0, f1, f2)"


def test_plan_default_width_mismatch_names_counts() -> None:
    schema = _features_batch().schema
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(schema)
    assert str(info.value) == (
        "model input 'X' takes 4 features per row but the data has 5 numeric columns (id, f0, f1, f2, f3); "
        "choose them with `features`, or pass identifiers through with `key_column`/`include`"
    )
    assert info.value.params == ("features", "key_column", "include")


def test_plan_default_features_skip_passthrough_and_text() -> None:
    plan = CLASSIFIER.plan(_features_batch().schema, not_features=["id"])
    assert plan.columns == ["f0", "f1", "f2", "f3"]


def test_default_feature_columns_are_the_numeric_columns_in_order() -> None:
    schema = pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("flag", pa.bool_()), ("price", pa.decimal128(9, 2)),
         ("when", pa.timestamp("s")), ("tags", pa.list_(pa.float32())), ("x", pa.float16())]
    )  # fmt: skip
    assert [is_value_type(f.type) for f in schema] == [True, False, True, True, False, False, True]
    assert default_feature_columns(schema) == ["id", "flag", "price", "x"]
    assert default_feature_columns(schema, {"id", "x"}) == ["flag", "price"]
    wide = Signature((TensorSpec("X", np.dtype("float32"), (-1, -1)),), ())
    assert wide.plan(schema, not_features=["id"]).columns == ["flag", "price", "x"]


def test_plan_default_without_numeric_columns() -> None:
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(_batch(name=["a"]).schema)
    assert str(info.value) == (
        "model input 'X' needs numeric feature columns but the data has none (columns: ['name']); "
        "name them with `features`"
    )
    assert info.value.params == ("features",)


def test_plan_abbreviates_long_column_lists() -> None:
    schema = pa.schema([pa.field(f"c{i}", pa.float32()) for i in range(10)])
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(schema)
    assert "the data has 10 numeric columns (c0, c1, c2, c3, …, c9)" in str(info.value)


def test_plan_rejects_non_value_column() -> None:
    schema = pa.schema([pa.field("f0", pa.timestamp("s"))] + [pa.field(f"f{j}", pa.float64()) for j in (1, 2, 3)])
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(schema, ["f0", "f1", "f2", "f3"])
    assert str(info.value) == "column 'f0' has type timestamp[s]; model input 'X' takes float32 values, one per column"


def test_plan_feature_mapping_names_unknown_input() -> None:
    with pytest.raises(BindError) as info:
        CLASSIFIER.plan(_features_batch().schema, {"Y": ["f0"]})
    assert str(info.value) == "features name unknown model inputs ['Y']; the model's inputs are 'X'"


def test_plan_flat_features_for_a_two_input_model() -> None:
    two = Signature((TensorSpec("a", F64, (-1, 2)), TensorSpec("b", F64, (-1,))), (TensorSpec("y", F64, (-1,)),))
    with pytest.raises(BindError) as info:
        two.plan(_features_batch().schema, ["f0", "f1", "f2"])
    assert str(info.value) == (
        "a flat feature list fits a model with one input; this model has 2 ('a', 'b'): give features per input"
    )
    bound = two.plan(_features_batch().schema, {"a": ["f0", "f1"], "b": ["f3"]}).bind(_features_batch())
    np.testing.assert_array_equal(bound.inputs["a"], [[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])
    np.testing.assert_array_equal(bound.inputs["b"], [3.0, 13.0, 23.0])


def test_plan_one_value_input_with_two_columns() -> None:
    scalar = Signature((TensorSpec("x", F64, (-1,)),), (TensorSpec("y", F64, (-1,)),))
    with pytest.raises(BindError) as info:
        scalar.plan(_features_batch().schema, ["f0", "f1"])
    assert str(info.value) == "model input 'x' takes one value per row; 2 columns given"


# -- bind ----------------------------------------------------------------------------------


def test_bind_stacks_columns_in_feature_order() -> None:
    batch = _features_batch()
    inputs = CLASSIFIER.bind(batch, ["f3", "f0", "f1", "f2"])
    assert inputs["X"].dtype == F32
    np.testing.assert_array_equal(inputs["X"], [[3, 0, 1, 2], [13, 10, 11, 12], [23, 20, 21, 22]])


def test_string_column_into_float_input_parses_per_row() -> None:
    batch = _batch(
        f0=["1.5", " 2 ", "abc", "", "1e3", None],
        f1=pa.array([1.0] * 6),
        f2=pa.array([2.0] * 6),
        f3=pa.array([3.0] * 6),
    )
    bound = CLASSIFIER.plan(batch.schema, ["f0", "f1", "f2", "f3"]).bind(batch)
    assert list(bound.failures) == [
        (2, "f0", "expected a number, found 'abc'"),
        (3, "f0", "missing value"),
        (5, "f0", "missing value"),
    ]
    assert bound.rows.tolist() == [0, 1, 4]
    np.testing.assert_array_equal(bound.inputs["X"][:, 0], np.array([1.5, 2.0, 1000.0], F32))
    assert bound.inputs["X"].shape == (3, 4)


def test_string_column_into_integer_input() -> None:
    sig = Signature((TensorSpec("n", np.dtype("int64"), (-1,)),), (TensorSpec("y", F64, (-1,)),))
    batch = _batch(n=["1", "2.5", "x", "7"])
    bound = sig.plan(batch.schema, ["n"]).bind(batch)
    assert [(r, f) for r, f, _ in bound.failures] == [(1, "n"), (2, "n")]
    assert bound.inputs["n"].tolist() == [1, 7]


def test_bind_nan_and_null_are_row_failures() -> None:
    batch = _batch(
        f0=pa.array([1.0, float("nan"), 3.0, None]),
        f1=pa.array([1.0, 1.0, None, 1.0]),
        f2=pa.array([1.0] * 4),
        f3=pa.array([1.0] * 4),
    )
    bound = CLASSIFIER.plan(batch.schema, ["f0", "f1", "f2", "f3"]).bind(batch)
    assert list(bound.failures) == [
        (1, "f0", "value is NaN and the model does not accept NaN (allow_nan: false)"),
        (2, "f1", "missing value"),
        (3, "f0", "missing value"),
    ]
    assert bound.rows.tolist() == [0]
    allowed = CLASSIFIER.plan(batch.schema, ["f0", "f1", "f2", "f3"], allow_nan=True).bind(batch)
    assert allowed.rows.tolist() == [0, 1]


def test_strict_bind_names_the_first_bad_row() -> None:
    batch = _batch(f0=[1.0, None], f1=[1.0, 1.0], f2=[1.0, 1.0], f3=[1.0, 1.0])
    with pytest.raises(BindError) as info:
        CLASSIFIER.bind(batch, ["f0", "f1", "f2", "f3"])
    assert str(info.value) == "row 1, field 'f0': missing value"


def test_list_column_binds_to_a_matrix_input() -> None:
    batch = _batch(X=pa.array([[1, 2, 3, 4], [5, 6, 7], None, [9, 10, 11, 12]], pa.list_(pa.float64())))
    bound = CLASSIFIER.plan(batch.schema).bind(batch)
    assert list(bound.failures) == [
        (1, "X", "expected 4 values per row, found a different number"),
        (2, "X", "missing value"),
    ]
    np.testing.assert_array_equal(bound.inputs["X"], np.array([[1, 2, 3, 4], [9, 10, 11, 12]], F32))


def test_fixed_size_list_column() -> None:
    values = pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], pa.float32())
    batch = _batch(X=pa.FixedSizeListArray.from_arrays(values, 4))
    bound = CLASSIFIER.plan(batch.schema).bind(batch)
    assert not bound.failures
    np.testing.assert_array_equal(bound.inputs["X"], [[1, 2, 3, 4], [5, 6, 7, 8]])


# -- unbind ----------------------------------------------------------------------------------


def test_unbind_vectors_become_fixed_size_lists() -> None:
    columns = CLASSIFIER.unbind(
        {"label": np.array([0, 1]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], F32)}, 2
    )
    assert [n for n, _ in columns] == ["label", "probabilities"]
    assert columns[0][1].type == pa.int64()
    assert columns[1][1].type == pa.list_(pa.float32(), 2)
    assert columns[1][1].to_pylist() == [
        pytest.approx([0.9, 0.1], rel=1e-6),
        pytest.approx([0.2, 0.8], rel=1e-6),
    ]


def test_unbind_missing_output() -> None:
    with pytest.raises(PredictError) as info:
        CLASSIFIER.unbind({"label": np.array([0])}, 1)
    assert str(info.value) == "the model returned no output 'probabilities'; it returned ['label']"


def test_tensor_with_wrong_row_count() -> None:
    with pytest.raises(PredictError) as info:
        tensor_to_arrow("y", np.zeros(3), 4)
    assert str(info.value) == "output 'y' has 3 rows for a batch of 4 rows"
    with pytest.raises(PredictError) as info:
        tensor_to_arrow("y", np.float64(1.0), 4)
    assert str(info.value) == "output 'y' has a scalar for a batch of 4 rows"


def test_tensor_of_strings() -> None:
    arr = tensor_to_arrow("label", np.array(["cat", "dog"], dtype=object), 2)
    assert arr.type == pa.string()
    assert arr.to_pylist() == ["cat", "dog"]


def test_tensor_3d() -> None:
    arr = tensor_to_arrow("t", np.arange(12, dtype=np.int32).reshape(2, 3, 2), 2)
    assert arr.type == pa.list_(pa.list_(pa.int32(), 2), 3)
    assert arr.to_pylist()[1] == [[6, 7], [8, 9], [10, 11]]


def test_tensor_spec_width_and_describe() -> None:
    assert TensorSpec("a", F32, (-1, 4)).width == 4
    assert TensorSpec("a", F32, (-1,)).width == 1
    assert TensorSpec("a", F32, (-1, -1)).width is None
    assert TensorSpec("a", F32, (-1, 2, 3)).width == 6
    assert TensorSpec("a", F32, (-1, 4)).describe() == "a: float32[?, 4]"


# -- RowFailures ---------------------------------------------------------------------------


def test_row_failures_first_failure_per_row_wins_and_rows_sorted() -> None:
    failures = RowFailures()
    assert not failures
    assert len(failures) == 0
    failures.add_mask(np.array([False, True, False, True]), "a", "bad a")
    failures.add_rows(np.array([3, 0]), "b", ["b for 3", "b for 0"])
    failures.add_mask(np.zeros(4, dtype=bool), "c", "never")
    assert failures
    assert len(failures) == 3
    assert list(failures) == [(0, "b", "b for 0"), (1, "a", "bad a"), (3, "a", "bad a")]
    assert failures.first() == (0, "b", "b for 0")
    assert failures.rows().tolist() == [0, 1, 3]
    assert failures.mask(5).tolist() == [True, True, False, True, False]


def test_row_failures_extend_maps_rows() -> None:
    inner = RowFailures()
    inner.add_rows(np.array([0, 2]), "x", ["first", "second"])
    outer = RowFailures()
    outer.extend(inner, np.array([10, 11, 12]))
    assert list(outer) == [(10, "x", "first"), (12, "x", "second")]


def test_cast_column_records_bad_values_and_nulls_them() -> None:
    failures = RowFailures()
    out = cast_column(pa.array(["1", "x", None, "2.5"]), "c", pa.float64(), failures)
    assert out.to_pylist() == [1.0, None, None, 2.5]
    assert list(failures) == [(1, "c", "expected a number, found 'x'")]


def test_cast_column_integer_target() -> None:
    failures = RowFailures()
    out = cast_column(pa.array(["1", "1.5", "7"]), "n", pa.int64(), failures)
    assert out.to_pylist() == [1, None, 7]
    assert list(failures) == [(1, "n", "expected an integer, found '1.5'")]


def test_parse_numeric_trims_and_treats_blank_as_missing() -> None:
    failures = RowFailures()
    out = parse_numeric(pa.array([" 3 ", "   ", "-1e-2", "NaN", "inf", "1,5"]), "p", failures)
    values = out.to_pylist()
    assert values[0] == 3.0
    assert values[1] is None
    assert values[2] == -0.01
    assert np.isnan(values[3])
    assert values[4] == float("inf")
    assert values[5] is None
    assert list(failures) == [(5, "p", "expected a number, found '1,5'")]


@pytest.mark.parametrize(
    ("types", "dtype"),
    [
        ((pa.float32(), pa.float32()), "float32"),  # one matrix, no cast
        ((pa.int64(), pa.int64()), "float32"),  # one matrix, cast once
        ((pa.float64(), pa.float64()), "int32"),
        ((pa.int32(), pa.float64()), "float32"),  # mixed types: column by column
        ((pa.float16(), pa.float16()), "float32"),
    ],
)
def test_stacked_columns_bind_to_the_same_matrix_on_every_path(types: tuple[pa.DataType, ...], dtype: str) -> None:
    values = [[1.5, -2.0, 3.25, 1024.0], [0.0, 7.0, -1.0, 5.5]]
    if pa.types.is_integer(types[0]):
        values = [[1, -2, 3, 1024], [0, 7, -1, 5]]
    columns = [pa.array(v, t) for v, t in zip(values, types, strict=True)]
    batch = pa.RecordBatch.from_arrays(columns, names=["a", "b"])
    signature = Signature((TensorSpec("x", np.dtype(dtype), (-1, 3)),), ())
    bound = signature.plan(batch.schema, ["b", "a", "b"]).bind(batch)
    expected = np.stack([np.asarray(values[1]), np.asarray(values[0]), np.asarray(values[1])], axis=1)
    assert bound.inputs["x"].dtype == np.dtype(dtype) and bound.inputs["x"].flags.writeable
    np.testing.assert_array_equal(bound.inputs["x"], expected.astype(dtype))


def test_a_missing_value_in_stacked_columns_fails_only_its_row() -> None:
    batch = pa.record_batch(
        {"a": pa.array([1.0, None, 3.0], pa.float32()), "b": pa.array([4.0, 5.0, 6.0], pa.float32())}
    )
    signature = Signature((TensorSpec("x", np.dtype("float32"), (-1, 2)),), ())
    bound = signature.plan(batch.schema, ["a", "b"]).bind(batch)
    assert list(bound.failures) == [(1, "a", "missing value")] and bound.rows.tolist() == [0, 2]
    np.testing.assert_array_equal(bound.inputs["x"], np.array([[1.0, 4.0], [3.0, 6.0]], np.float32))
