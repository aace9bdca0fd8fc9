"""``python -m sluice``: the same as the ``sluice`` command (e.g. under ``torchrun -m sluice``)."""

from sluice.cli.main import main

main()
