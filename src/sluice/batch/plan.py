"""Planning a job: the model, the shards, and how columns bind and pass through."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from sluice.batch.spec import JobSpec
from sluice.batch.step import empty_outputs
from sluice.data.images import IMAGE_BYTES_COLUMN
from sluice.data.schema import check_input_columns, feature_read_schema, infer_input_schema, input_columns
from sluice.data.shards import Shard, plan_shards
from sluice.errors import ConfigError, DataError
from sluice.models.base import Model
from sluice.models.loader import load_source, model_digest, resolve_model
from sluice.models.signature import BindPlan, FeatureSpec

__all__ = ["ColumnPlan", "ImageBinding", "JobPlan", "image_binding", "plan_columns", "plan_job"]


@dataclass(frozen=True)
class ColumnPlan:
    """Which columns are read, which feed the model, which are copied to the output."""

    passthrough: tuple[str, ...]
    bind: BindPlan
    read: tuple[str, ...]
    raw: tuple[str, ...]  # feature-only columns of text inputs, parsed by the model's dtype
    image_paths: str | None = None  # a column of image paths whose files the readers read

    def read_schema(self, schema: pa.Schema) -> pa.Schema:
        return feature_read_schema(schema, self.raw)


@dataclass
class JobPlan:
    spec: JobSpec
    model: Model
    shards: list[Shard]
    schema: pa.Schema
    columns: ColumnPlan
    model_digest: str

    def output_schema(self) -> pa.Schema:
        """The columns of every output part: the pass-through columns, then the model's outputs."""
        passthrough = [self.schema.field(name) for name in self.columns.passthrough]
        outputs = empty_outputs(self.model.signature)
        return pa.schema([*passthrough, *(pa.field(n, a.type) for n, a in outputs)])

    def fingerprint(self) -> dict[str, object]:
        """What a re-run must share with this run to resume its output."""
        return {
            "model": self.model.source.display_name,
            "model_digest": self.model_digest,
            "shards": [s.identity() for s in self.shards],
            "columns": list(self.columns.passthrough),
            "features": list(self.columns.bind.columns),
            "output_format": self.spec.output_format,
            **({"key_type": self.spec.key_type} if self.spec.key_type is not None else {}),
        }


def plan_job(spec: JobSpec, model: Model | None = None) -> JobPlan:
    if model is None:
        source = resolve_model(
            spec.model, spec.repository, options=spec.load_options(), search_path=spec.model_search_path
        )
        model = load_source(source.with_config(spec.model_settings(source.config)))
    shards = plan_shards(
        spec.input, spec.input_format, shard_rows=spec.shard_rows, storage_options=spec.storage_options
    )
    # every file's footer or header, before any work: a later file missing a column must not
    # stop the job after the earlier files' parts are written
    if shards[0].format == "image" and spec.key_column is None:
        spec = spec.model_copy(update={"key_column": "key"})  # an image's key is its path
    columns_by_file = input_columns(shards)
    schema = infer_input_schema(shards, spec.key_column, spec.key_type)
    columns = plan_columns(spec, model, schema, text_input=shards[0].format in ("csv", "jsonl"))
    check_input_columns(columns_by_file, columns.read)
    return JobPlan(spec, model, shards, schema, columns, model_digest(model))


def _text_column(spec: JobSpec, schema: pa.Schema) -> list[str] | None:
    """The ``text_column`` a text model reads, checked to be a string column of the input."""
    name = spec.text_column
    if name is None:
        return None
    index = schema.get_field_index(name)
    if index < 0:
        raise DataError(
            f"`text_column` '{name}' is not a column of the input; columns: {schema.names}", params=("text_column",)
        )
    found = schema.field(index).type
    if not (pa.types.is_string(found) or pa.types.is_large_string(found)):
        raise DataError(f"`text_column` '{name}' has type {found}; expected a string column", params=("text_column",))
    return [name]


def plan_columns(spec: JobSpec, model: Model, schema: pa.Schema, *, text_input: bool) -> ColumnPlan:
    names = schema.names
    for option, listed in (("include", spec.include), ("exclude", spec.exclude)):
        unknown = [c for c in listed or [] if c not in names]
        if unknown:
            raise DataError(
                f"`{option}` names column(s) {unknown} that the input does not have; columns: {names}", params=(option,)
            )
    if spec.key_column is not None and spec.key_column not in names:
        raise DataError(
            f"`key_column` '{spec.key_column}' is not a column of the input; columns: {names}", params=("key_column",)
        )
    excluded = spec.exclude
    passthrough = [c for c in names if c not in excluded] if excluded is not None else list(spec.include or [])
    if spec.key_column is not None:
        passthrough = [spec.key_column, *(c for c in passthrough if c != spec.key_column)]
    outputs = {s.name for s in model.signature.outputs}
    clash = sorted(outputs.intersection(passthrough))
    if clash:
        raise ConfigError(
            f"column(s) {clash} would be both passed through and written as model outputs; "
            "leave them out with `exclude` or `include`",
            params=("exclude", "include"),
        )
    image = ImageBinding(None, schema, None)
    features: FeatureSpec
    if spec.image_column is None:
        features = spec.features or _text_column(spec, schema) or model.source.config.features or model.default_features
    else:
        image = image_binding(spec.image_column, model, schema)
        features = image.features
    bind = model.signature.plan(
        image.schema, features, not_features=passthrough, allow_nan=model.source.config.allow_nan
    )
    read_columns = [c for c in bind.columns if c != IMAGE_BYTES_COLUMN]
    read = tuple(dict.fromkeys([*passthrough, *read_columns, *([image.paths] if image.paths else [])]))
    raw = tuple(c for c in read_columns if c not in passthrough) if text_input else ()
    return ColumnPlan(tuple(passthrough), bind, read, raw, image.paths)


@dataclass(frozen=True)
class ImageBinding:
    """How an image column feeds the model: the features, the schema to bind, the path column."""

    features: FeatureSpec
    schema: pa.Schema
    paths: str | None  # a string column of paths: its files are read into IMAGE_BYTES_COLUMN


def image_binding(column: str, model: Model, schema: pa.Schema) -> ImageBinding:
    """Bind ``column`` to the model's one BYTES input: a binary column as it is, a string column
    of paths by the images its paths name (read by the readers)."""
    if column not in schema.names:
        raise DataError(
            f"`image_column` '{column}' is not a column of the input; columns: {schema.names}",
            params=("image_column",),
        )
    inputs = [s for s in model.signature.inputs if s.dtype.kind == "O"]
    if len(inputs) != 1:
        raise ConfigError(
            f"`image_column` feeds a model's one BYTES input; model {model.source.display_name} has "
            f"{len(inputs)} ({model.signature.describe()})",
            params=("image_column",),
        )
    name = inputs[0].name
    kind = schema.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return ImageBinding({name: [column]}, schema, None)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bytes_schema = schema.append(pa.field(IMAGE_BYTES_COLUMN, pa.binary()))
        return ImageBinding({name: [IMAGE_BYTES_COLUMN]}, bytes_schema, column)
    raise DataError(
        f"`image_column` '{column}' has type {kind}; expected binary (encoded images) or string "
        "(paths or URIs of image files)",
        params=("image_column",),
    )
