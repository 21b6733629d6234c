"""Config errors that name the file, line and key instead of dumping a traceback."""
from __future__ import annotations


class ConfigError(Exception):
    """A user-facing configuration error; the CLI prints it without a traceback."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 line: int | None = None):
        self.message, self.source, self.key, self.line = message, source, key, line
        where = source or "<config>"
        if line is not None:
            where += f":{line}"
        prefix = f"{where}: " + (f"{key}: " if key else "")
        super().__init__(prefix + message)


class ConfigValueError(ValueError):
    """Raised by a section's validate(); the loader adds the file, key path and line."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")
