"""Data: sources and sinks over Arrow and fsspec, sharding, atomic output, error files."""

from sluice.data.location import DataFormat, Location, detect_format, list_inputs, resolve_location
from sluice.data.readers import RecordFailure, SourceBatch, read_shard
from sluice.data.schema import infer_schema
from sluice.data.shards import DEFAULT_SHARD_ROWS, Shard, plan_shards
from sluice.data.writers import AtomicFile, ErrorWriter, OutputFormat, PartWriter, part_name

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "AtomicFile",
    "DataFormat",
    "ErrorWriter",
    "Location",
    "OutputFormat",
    "PartWriter",
    "RecordFailure",
    "Shard",
    "SourceBatch",
    "detect_format",
    "infer_schema",
    "list_inputs",
    "part_name",
    "plan_shards",
    "read_shard",
    "resolve_location",
]
