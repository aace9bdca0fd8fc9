"""Variable-length token batches: forward passes, padding and what the padding costs.

Pure numpy, no torch: a batch of token-id rows is split into forward passes of at most
``rows_per_pass`` rows, each padded to its longest row. With bucketing the rows are taken in
order of length, so rows of like length share a pass and little padding is computed; every
output is put back at its row, so output order is input order either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PaddingCounts", "forward_passes", "pad_rows", "padding_counts", "row_lengths"]


def row_lengths(rows: np.ndarray) -> np.ndarray:
    """The length of each token-id row of an object array of 1-D arrays."""
    return np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))


def forward_passes(lengths: np.ndarray, rows_per_pass: int, *, bucketing: bool) -> list[np.ndarray]:
    """The rows of each forward pass (indices into the batch), every row in exactly one pass.

    With ``bucketing`` the rows go by length (a stable sort, so equal lengths keep their
    order); without, in input order.
    """
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
    return [order[i : i + rows_per_pass] for i in range(0, len(order), rows_per_pass)]


@dataclass(frozen=True)
class PaddingCounts:
    """Tokens of a batch: the records' own, and the cells of the padded passes that hold them."""

    tokens: int
    padded_tokens: int


def padding_counts(lengths: np.ndarray, passes: Sequence[np.ndarray]) -> PaddingCounts:
    """The tokens of ``lengths`` and the padded cells the forward ``passes`` compute."""
    padded = sum(int(len(p) * lengths[p].max()) for p in passes if len(p))
    return PaddingCounts(int(lengths.sum()), padded)


def pad_rows(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` padded on the right to the longest: token ids (int64) and the attention mask (int64)."""
    longest = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
