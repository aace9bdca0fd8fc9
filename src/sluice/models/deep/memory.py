"""PyTorch's side of memory: measuring device memory (models.base recognises torch's out-of-memory error).

Callers outside this package import it only when ``torch`` is already in ``sys.modules`` (a
model imported it), so asking about CUDA never loads torch.
"""

from __future__ import annotations

import torch

__all__ = ["CudaMemoryMeter", "cuda_meter"]


class CudaMemoryMeter:
    """Peak memory torch's caching allocator handed out on one CUDA device since :meth:`start`."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.where = f"cuda:{device}"
        self._baseline = 0

    def start(self) -> None:
        """Forget earlier peaks: what :meth:`peak_growth_bytes` reports starts from here."""
        self.reset_peak()
        self._baseline = int(torch.cuda.memory_allocated(self.device))

    def reset_peak(self) -> None:
        """Forget earlier peaks, keeping the baseline."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_growth_bytes(self) -> int:
        """The highest allocation above the baseline since :meth:`start`."""
        torch.cuda.synchronize(self.device)
        return max(0, int(torch.cuda.max_memory_allocated(self.device)) - self._baseline)


def cuda_meter() -> CudaMemoryMeter | None:
    """A meter of the current CUDA device when this process has put a model there, else None."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return None
    return CudaMemoryMeter(torch.cuda.current_device())
