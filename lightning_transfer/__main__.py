"""``python -m lightning_transfer`` = the ``lightning-transfer`` command."""

from lightning_transfer.cli import main

main()
