"""The executor's user-facing error types, importable without torch (the CLI and the experiment
runner catch them to print one line instead of a traceback)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A model directory that cannot be loaded as it stands; the message names the file and the tensor."""


class NonFiniteError(ValueError):
    """NaN or Inf where a model's output must be finite; the message names the step and request."""
