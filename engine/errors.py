"""Errors a user can act on. Their message is one line that names what was wrong."""


class EngineError(Exception):
    """Bad input or an unusable environment: reported as a one-line error, never a traceback."""


class ConfigError(EngineError):
    """A preset, an override or a file it names is not acceptable."""


class DataError(EngineError):
    """A corpus cannot be loaded: missing, empty, misaligned or undecodable."""


class ChildProcessFailed(EngineError):
    """A worker process died; ``details`` holds its last stderr lines for RunFailed."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = list(details or [])
