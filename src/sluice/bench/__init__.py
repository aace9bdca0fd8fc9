"""Load generation and measurement helpers shared by ``bench/`` scripts and ``sluice bench``."""

__all__: list[str] = []  # used module by module (sluice.bench.loadgen, sluice.bench.oip, ...)
