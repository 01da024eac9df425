"""Where the project's outside data lives: `../shared` beside the repository (real traces,
GPU operator profiles), or the folder `FOLOVLLM_SHARED` names. The data is never copied into
the repository; everything that reads it asks here, and works without it."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("FOLOVLLM_SHARED") or REPO.parent / "shared")


def shared_path(*parts: str) -> Path:
    """A path under the shared folder (it may not exist: callers check and skip, saying so)."""
    return shared_root().joinpath(*parts)


def azure_conv_trace() -> Path:
    return shared_path("traces", "azure-2023-conv", "AzureLLMInferenceTrace_conv.csv")


def mooncake_conv_trace() -> Path:
    return shared_path("traces", "mooncake-conversation", "conversation_trace_0-45min.jsonl")
