"""One error type for bad trace input, always naming the file, the line and the reason."""

from __future__ import annotations


class TraceFormatError(ValueError):
    def __init__(self, path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")
