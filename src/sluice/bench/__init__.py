"""Load generation and measurement helpers shared by ``bench/`` scripts and ``sluice bench``."""
