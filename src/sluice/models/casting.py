"""Arrow casting with per-row failures, kept here for existing imports: it lives in :mod:`sluice.arrowcast`."""

from sluice.arrowcast import RowFailures, array_from_numpy, cast_column, describe_type, numpy_view, parse_numeric

__all__ = ["RowFailures", "array_from_numpy", "cast_column", "describe_type", "numpy_view", "parse_numeric"]
