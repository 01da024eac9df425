"""Shared helpers for the traces tests: where the real traces live (skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


def real_trace(relpath: str) -> Path:
    path = SHARED_TRACES / relpath
    if not path.is_file():
        pytest.skip(f"real trace {relpath} not present (expected under {SHARED_TRACES}); the repo does not ship traces")
    return path


AZURE_CODE = "azure-2023-code/AzureLLMInferenceTrace_code.csv"
AZURE_CONV = "azure-2023-conv/AzureLLMInferenceTrace_conv.csv"
MOONCAKE = "mooncake-conversation/conversation_trace_0-45min.jsonl"
VIDUR_CODE = "vidur-splitwise/splitwise_code.csv"
VIDUR_CONV = "vidur-splitwise/splitwise_conv.csv"
