"""The ``sluice`` command line."""

__all__: list[str] = []  # a command, not a Python API: its entry point is sluice.cli.main:main
