"""Where a PyTorch model runs and in what precision, and how a batch gets there.

:func:`resolve_device` turns ``LoadOptions.device`` into a ``torch.device``;
:func:`compute_dtype` turns ``LoadOptions.precision`` into the floating dtype the model computes
in; :class:`HostToDevice` moves a batch's host arrays onto the device.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from sluice.errors import ModelLoadError
from sluice.models.config import LoadOptions, Precision

__all__ = ["HostToDevice", "apply_threads", "compute_dtype", "resolve_device"]

_DTYPES: dict[Precision, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(options: LoadOptions) -> torch.device:
    """The device ``options.device`` names: ``auto`` is the first GPU when PyTorch sees one, else the CPU.

    Asking for ``cuda``/``cuda:N`` where there is no such GPU raises :class:`ModelLoadError`.
    """
    name = options.device
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda", 0)
    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "it finds no CUDA GPU"
        raise ModelLoadError(
            f"device '{name}' was requested but PyTorch cannot use a GPU here ({why}); "
            "use `device='cpu'` or `device='auto'`",
            params=("device",),
        )
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ModelLoadError(
            f"device '{name}' was requested but PyTorch sees {count} GPU(s) here; use one of them, "
            f"`device='cuda:0'` to `device='cuda:{count - 1}'`",
            params=("device",),
        )
    return device if device.index is not None else torch.device("cuda", 0)


def compute_dtype(options: LoadOptions) -> torch.dtype:
    """The floating dtype ``options.precision`` names (``fp32`` leaves a model as it was saved)."""
    return _DTYPES[options.precision]


def apply_threads(options: LoadOptions) -> None:
    """Set PyTorch's intra-op thread count from ``options.intra_op_threads`` (process-wide in PyTorch)."""
    if options.intra_op_threads is not None and torch.get_num_threads() != options.intra_op_threads:
        torch.set_num_threads(options.intra_op_threads)


class HostToDevice:
    """Moves a batch's host arrays onto ``device``.

    On the CPU the tensors share the arrays' memory (no copy) unless an array is read-only (a
    request body's buffer, say), which is copied, since a program may write to its inputs. On a
    GPU each array is staged in pinned (page-locked) host memory and copied on a side stream of
    the calling thread; the compute stream waits for that copy only, so while one worker thread's
    batch computes the next thread's batch is already crossing the bus. PyTorch's caching host
    allocator keeps a pinned block until the copies recorded on it are done, which makes the
    staging memory safe to reuse.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._streams = threading.local()

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The arrays as tensors on the device, ready for use on the current stream."""
        tensors = [torch.from_numpy(_writable(a)) for a in arrays]
        if self.device.type != "cuda":
            return tensors
        copy_stream = self._copy_stream()
        with torch.cuda.stream(copy_stream):
            moved = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
        compute_stream = torch.cuda.current_stream(self.device)
        compute_stream.wait_stream(copy_stream)
        for tensor in moved:
            # allocated on the copy stream, used on the compute stream: keep the memory until both are done
            tensor.record_stream(compute_stream)
        return moved

    def _copy_stream(self) -> torch.cuda.Stream:
        stream: torch.cuda.Stream | None = getattr(self._streams, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            self._streams.stream = stream
        return stream


def _writable(array: np.ndarray) -> np.ndarray:
    contiguous = np.ascontiguousarray(array)
    return contiguous if contiguous.flags.writeable else contiguous.copy()
