"""The release of this package; a leaf, so any layer may report it without importing the others."""

__all__ = ["__version__"]

__version__ = "0.1.0"
