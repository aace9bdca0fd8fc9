"""Signatures: the named, typed tensors a model takes and returns.

A :class:`Signature` is the single place where Arrow columns become tensors and tensors
become columns again. Binding is planned once per schema (:meth:`Signature.plan`) and then
applied to every batch (:meth:`BindPlan.bind`), so the per-batch work is a handful of
vectorised copies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sluice.arrowcast import RowFailures, array_from_numpy, numpy_view, parse_numeric
from sluice.errors import BindError, PredictError

__all__ = [
    "BindPlan",
    "BoundBatch",
    "FeatureSpec",
    "InputBinding",
    "Signature",
    "TensorSpec",
    "default_feature_columns",
    "is_value_type",
]

FeatureSpec = Sequence[str] | Mapping[str, Sequence[str]] | None


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: dtype and shape, ``-1`` for a dynamic dimension (the first is the batch)."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]

    @property
    def width(self) -> int | None:
        """Number of values per row for a 2-D tensor, ``1`` for 1-D, ``None`` when dynamic."""
        if len(self.shape) <= 1:
            return 1
        row = self.shape[1:]
        if any(d < 0 for d in row):
            return None
        return int(np.prod(row))

    def describe(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


@dataclass(frozen=True)
class InputBinding:
    """How one model input takes its values: several scalar columns stacked, or one column."""

    spec: TensorSpec
    columns: tuple[str, ...]
    stacked: bool


@dataclass
class BoundBatch:
    """Tensors for the rows that bound cleanly, plus the rows that did not."""

    inputs: dict[str, np.ndarray]
    rows: np.ndarray  # indices (into the batch) of the rows in ``inputs``
    failures: RowFailures = field(default_factory=RowFailures)

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def raise_first_failure(self) -> None:
        """Raise :class:`BindError` naming the first row that did not bind, if any did not."""
        if self.failures:
            row, fld, message = self.failures.first()
            where = f", field '{fld}'" if fld else ""
            raise BindError(f"row {row}{where}: {message}")


@dataclass(frozen=True)
class Signature:
    """Named inputs and outputs of a model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise BindError(f"the model has no input named '{name}'; it has {self._names(self.inputs)}")

    @staticmethod
    def _names(specs: Sequence[TensorSpec]) -> str:
        return ", ".join(f"'{s.name}'" for s in specs)

    def describe(self) -> str:
        ins = "; ".join(s.describe() for s in self.inputs)
        outs = "; ".join(s.describe() for s in self.outputs)
        return f"inputs: {ins} -> outputs: {outs}"

    def to_dict(self) -> dict[str, object]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    # -- binding -----------------------------------------------------------------------

    def plan(
        self,
        schema: pa.Schema,
        features: FeatureSpec = None,
        *,
        not_features: Sequence[str] = (),
        allow_nan: bool = False,
    ) -> BindPlan:
        """Decide which columns feed which input; raises :class:`BindError` when they cannot."""
        if isinstance(features, Mapping):
            unknown = set(features) - {s.name for s in self.inputs}
            if unknown:
                raise BindError(
                    f"features name unknown model inputs {sorted(unknown)}; "
                    f"the model's inputs are {self._names(self.inputs)}"
                )
            bindings = [
                _stack_binding(spec, list(features[spec.name]), schema)
                if spec.name in features
                else _column_binding(spec, schema)
                for spec in self.inputs
            ]
        elif features is not None:
            if len(self.inputs) != 1:
                raise BindError(
                    f"a flat feature list fits a model with one input; this model has "
                    f"{len(self.inputs)} ({self._names(self.inputs)}): give features per input"
                )
            bindings = [_stack_binding(self.inputs[0], list(features), schema)]
        elif len(self.inputs) == 1 and self.inputs[0].name not in schema.names:
            bindings = [_default_binding(self.inputs[0], schema, set(not_features))]
        else:
            bindings = [_column_binding(spec, schema) for spec in self.inputs]
        return BindPlan(tuple(bindings), allow_nan)

    def bind(self, batch: pa.RecordBatch, features: FeatureSpec = None) -> dict[str, np.ndarray]:
        """Bind a whole batch strictly: any row that does not fit raises :class:`BindError`."""
        bound = self.plan(batch.schema, features).bind(batch)
        bound.raise_first_failure()
        return bound.inputs

    def unbind(self, outputs: Mapping[str, np.ndarray], num_rows: int) -> list[tuple[str, pa.Array]]:
        """Turn model outputs into Arrow columns named after the outputs (vectors as lists)."""
        columns = []
        for spec in self.outputs:
            if spec.name not in outputs:
                raise PredictError(f"the model returned no output '{spec.name}'; it returned {sorted(outputs)}")
            columns.append((spec.name, tensor_to_arrow(spec.name, outputs[spec.name], num_rows)))
        return columns


@dataclass(frozen=True)
class BindPlan:
    """A binding decided for one schema; :meth:`bind` applies it to batches of that schema."""

    bindings: tuple[InputBinding, ...]
    allow_nan: bool

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for b in self.bindings:
            seen.update(dict.fromkeys(b.columns))
        return list(seen)

    def bind(self, batch: pa.RecordBatch) -> BoundBatch:
        failures = RowFailures()
        arrays = {b.spec.name: _gather(b, batch, failures, self.allow_nan) for b in self.bindings}
        if not failures:
            return BoundBatch(arrays, np.arange(batch.num_rows), failures)
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[failures.rows()] = False
        rows = np.flatnonzero(keep)
        return BoundBatch({k: v[keep] for k, v in arrays.items()}, rows, failures)


def is_value_type(t: pa.DataType) -> bool:
    """Whether a column of type ``t`` holds numbers a numeric tensor takes as they are."""
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)) or pa.types.is_decimal(t)


def default_feature_columns(schema: pa.Schema, excluded: Collection[str] = ()) -> list[str]:
    """The features chosen when none are named: every numeric column not in ``excluded``, in order."""
    return [f.name for f in schema if f.name not in excluded and is_value_type(f.type)]


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _is_binary(t: pa.DataType) -> bool:
    """Binary values (e.g. encoded images), which only a BYTES input takes: as ``bytes`` objects."""
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _field_type(schema: pa.Schema, name: str, spec: TensorSpec) -> pa.DataType:
    index = schema.get_field_index(name)
    if index < 0:
        raise BindError(
            f"model input '{spec.name}' needs column '{name}', which the data does not have; "
            f"its columns are {schema.names}"
        )
    return schema.field(index).type


def _stack_binding(spec: TensorSpec, names: list[str], schema: pa.Schema) -> InputBinding:
    if not names:
        raise BindError(f"no feature columns given for model input '{spec.name}'")
    for name in names:
        t = _field_type(schema, name, spec)
        if not (is_value_type(t) or _is_text(t) or pa.types.is_null(t) or (_is_binary(t) and spec.dtype.kind == "O")):
            raise BindError(
                f"column '{name}' has type {t}; model input '{spec.name}' takes "
                f"{spec.dtype.name} values, one per column"
            )
    width = spec.width
    if len(spec.shape) <= 1 and len(names) != 1:
        raise BindError(f"model input '{spec.name}' takes one value per row; {len(names)} columns given")
    if width is not None and width != len(names):
        raise BindError(
            f"model input '{spec.name}' takes {width} features per row but {len(names)} "
            f"columns were given ({_abbrev(names)})"
        )
    return InputBinding(spec, tuple(names), stacked=True)


def _column_binding(spec: TensorSpec, schema: pa.Schema) -> InputBinding:
    t = _field_type(schema, spec.name, spec)
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        return InputBinding(spec, (spec.name,), stacked=False)
    return _stack_binding(spec, [spec.name], schema)


def _default_binding(spec: TensorSpec, schema: pa.Schema, excluded: set[str]) -> InputBinding:
    if spec.dtype.kind == "O" and len(spec.shape) == 1:
        return _text_binding(spec, schema, excluded)
    names = default_feature_columns(schema, excluded)
    if not names:
        raise BindError(
            f"model input '{spec.name}' needs numeric feature columns but the data has none "
            f"(columns: {schema.names}); name them with `features`",
            params=("features",),
        )
    width = spec.width
    if width is not None and width != len(names):
        raise BindError(
            f"model input '{spec.name}' takes {width} features per row but the data has "
            f"{len(names)} numeric columns ({_abbrev(names)}); choose them with `features`, "
            f"or pass identifiers through with `key_column`/`include`",
            params=("features", "key_column", "include"),
        )
    return InputBinding(spec, tuple(names), stacked=True)


def _text_binding(spec: TensorSpec, schema: pa.Schema, excluded: set[str]) -> InputBinding:
    """A text input takes the one string column that is not passed through."""
    names = [f.name for f in schema if f.name not in excluded and _is_text(f.type)]
    if len(names) != 1:
        found = f"{len(names)} ({_abbrev(names)})" if names else "none"
        raise BindError(
            f"model input '{spec.name}' takes one text column, the only string column not passed through; "
            f"the data has {found} (columns: {schema.names}): name it with `text_column`",
            params=("text_column",),
        )
    return InputBinding(spec, (names[0],), stacked=True)


def _abbrev(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join([*names[: limit - 2], "…", names[-1]])


def _gather(b: InputBinding, batch: pa.RecordBatch, failures: RowFailures, allow_nan: bool) -> np.ndarray:
    n = batch.num_rows
    dtype = b.spec.dtype
    if not b.stacked:
        return _list_column(b, batch.column(b.columns[0]), failures, allow_nan)
    out = _dense_matrix(batch, b.columns, dtype) if n else None
    if out is None:
        values = [_scalar_column(name, batch.column(name), dtype, failures) for name in b.columns]
        # One strided copy into the row-major tensor; casting as an assignment would.
        out = np.stack(values, axis=1, dtype=dtype, casting="unsafe") if n else np.empty((0, len(values)), dtype)
    if not allow_nan and out.dtype.kind == "f" and np.isnan(out).any():
        nan = np.isnan(out)
        for j in np.flatnonzero(nan.any(axis=0)):
            failures.add_mask(nan[:, j], b.columns[j], _NAN_MESSAGE)
    if len(b.spec.shape) <= 1:
        return out.reshape(n)
    return out.reshape((n, *(d if d >= 0 else -1 for d in b.spec.shape[1:])))


_NAN_MESSAGE = "value is NaN and the model does not accept NaN (allow_nan: false)"


def _dense_matrix(batch: pa.RecordBatch, names: Sequence[str], dtype: np.dtype[np.generic]) -> np.ndarray | None:
    """The columns as one row-major matrix when they share one integer or float type and hold
    no missing value, else ``None``. Arrow fills the matrix in one call, which costs half of
    stacking the columns one by one: on wide inputs the per-column work dominates binding."""
    if dtype.kind not in "iuf":
        return None
    columns = batch.select(list(names))
    first = columns.schema.types[0]
    if not (pa.types.is_integer(first) or pa.types.is_floating(first)) or pa.types.is_float16(first):
        return None
    if any(t != first for t in columns.schema.types):
        return None
    try:
        matrix = np.asarray(columns.to_tensor(row_major=True))
    except pa.ArrowTypeError:  # missing values: the column-by-column path records their rows
        return None
    # the cast the column-by-column path makes (casting="unsafe"), done once on the matrix
    return matrix.astype(dtype, casting="unsafe", copy=False)


def _scalar_column(name: str, col: pa.Array, dtype: np.dtype[np.generic], failures: RowFailures) -> np.ndarray:
    t = col.type
    if dtype.kind in "OUS":
        if col.null_count:
            failures.add_mask(col.is_null().to_numpy(zero_copy_only=False), name, "missing value")
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_null(t):
        failures.add_mask(np.ones(len(col), dtype=bool), name, "missing value")
        return np.zeros(len(col), dtype=dtype)
    if _is_text(t):
        col = parse_numeric(col, name, failures, pa.int64() if dtype.kind in "iu" else None)
    elif not is_value_type(t):
        raise BindError(f"column '{name}' has type {t}; expected {dtype.name} values")
    if col.null_count:
        failures.add_mask(col.is_null().to_numpy(zero_copy_only=False), name, "missing value")
        # a placeholder for the rows set aside above; booleans take ``False``, not the integer 0
        col = col.fill_null(False if pa.types.is_boolean(col.type) else 0)
    return numpy_view(col)


def _list_column(b: InputBinding, col: pa.Array, failures: RowFailures, allow_nan: bool) -> np.ndarray:
    name = b.columns[0]
    n = len(col)
    width = b.spec.width
    if col.null_count:
        failures.add_mask(col.is_null().to_numpy(zero_copy_only=False), name, "missing value")
    if pa.types.is_fixed_size_list(col.type):
        found = col.type.list_size
        lengths = np.full(n, found)
    else:
        lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        found = int(lengths.max()) if n else 0
    expected = width if width is not None else found
    wrong = lengths != expected
    if col.null_count:
        wrong &= ~col.is_null().to_numpy(zero_copy_only=False)
    if wrong.any():
        failures.add_mask(wrong, name, f"expected {expected} values per row, found a different number")
    out = np.zeros((n, expected), dtype=b.spec.dtype)
    good = ~failures.mask(n)
    if good.any():
        values = col.filter(pa.array(good)).flatten()
        if values.null_count:
            raise BindError(f"column '{name}' holds missing values inside its lists")
        flat = values.to_numpy(zero_copy_only=False).astype(b.spec.dtype, copy=False)
        out[good] = flat.reshape(-1, expected)
        if not allow_nan and out.dtype.kind == "f":
            nan = np.asarray(np.isnan(out).any(axis=1))
            if nan.any():
                failures.add_mask(nan, name, _NAN_MESSAGE)
    return out.reshape((n, *(d if d >= 0 else -1 for d in b.spec.shape[1:])))


def tensor_to_arrow(name: str, values: np.ndarray, num_rows: int) -> pa.Array:
    """One output tensor as an Arrow column: scalars as values, vectors as fixed-size lists."""
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.shape[0] != num_rows:
        found = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
        raise PredictError(f"output '{name}' has {found} for a batch of {num_rows} rows")
    if arr.ndim == 1:
        return _array(arr)
    flat = _array(np.ascontiguousarray(arr).reshape(-1))
    for size in reversed(arr.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, int(size))
    return flat


def _array(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "O":
        return pa.array(values.tolist(), type=pa.string() if _all_str(values) else None)
    return array_from_numpy(values)


def _all_str(values: np.ndarray) -> bool:
    return all(isinstance(v, str) for v in values[:16])
