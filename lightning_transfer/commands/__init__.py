"""The ``lightning-transfer`` command: LightningCLI for fit/validate/test/predict (``cli``), and the
``data``, ``visualize`` and ``demo`` subcommands."""
