"""The ``lightning-transfer`` command: LightningCLI for fit/validate/test/predict (``cli``), and the
``data``, ``visualize``, ``demo``, ``lr_find`` and ``export`` subcommands."""
