"""Adapters for deep models: PyTorch programs and Hugging Face model directories.

Everything here imports torch (and transformers) at module level; the model loader imports
these modules only when such a model is loaded, so ``import sluice`` never pays for torch.
"""

__all__: list[str] = []
