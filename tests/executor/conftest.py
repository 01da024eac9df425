"""Executor tests: on a machine without CUDA, run Triton kernels in the interpreter.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when its module is first imported, so it is
set here (before any test module imports triton) and only when no GPU exists: on a GPU machine the
kernels take the real compiled path.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# --------------------------------------------------------------------------------------------------
# Model fixtures for the executor tests (engine, loader, parity with transformers).
# --------------------------------------------------------------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """Random HF directories of the three tiny shapes, written once per session."""
    from executor.models_registry import write_random_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {shape: write_random_model(shape, root / shape, seed=0)
            for shape in ("tiny-qwen2", "tiny-qwen3", "tiny-llama")}


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU ops on a shared 2-core machine: one intra-op thread avoids ~10 ms barrier waits
    every time a sibling process steals the second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_dir():
    from executor.models_registry import prepare_smollm2

    try:
        return prepare_smollm2()
    except FileNotFoundError as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")
