"""``python -m lightning_transfer`` = the ``lightning-transfer`` command."""

from lightning_transfer.commands.cli import main

main()
