"""One exception type for problems the user can fix, so the CLI can print them as one line."""


class UserError(Exception):
    """Bad input or environment: the message names the file or value and what to do."""


class WeightsUnavailableError(UserError):
    """Pretrained weights were requested but cannot be obtained (offline, not cached, no package)."""
