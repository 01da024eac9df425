"""Reading safetensors checkpoints so that a damaged file is an error, never a wrong answer.

A truncated file, a garbled header, a zero-byte shard, bytes overwritten inside tensor data, or
a tensor stored with the wrong dtype all used to reach the user as a library traceback or, worse,
as a perplexity of NaN with exit code 0. Every check here raises `CheckpointError`, whose message
names the file and (when one is at fault) the tensor. The checks are cheap and run once, on load:
one header parse per file, one dtype comparison and one `isfinite().all()` per tensor.

GPTQ tensors have documented dtypes (the HF / AutoGPTQ / GPTQModel layout): `qweight`, `qzeros`
and `g_idx` are int32 (bit-packed or indices: any other dtype would be silently re-interpreted);
`scales` and `bias` are floating point (float16 as written; bfloat16 / float32 accepted).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from executor.errors import CheckpointError

__all__ = ["CheckpointError", "all_finite", "check_tensor", "load_file_checked", "open_safetensors", "read_json_file",
           "read_tensor", "require_dtype", "require_finite"]

GPTQ_INT_SUFFIXES = (".qweight", ".qzeros", ".g_idx")


@contextlib.contextmanager
def open_safetensors(path: Path):
    """`safe_open` with every failure (empty, truncated, bad header, unreadable) as a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the checkpoint is truncated or was never written")
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); "
                              "the file is truncated or corrupted") from None
    with handle as f:
        yield f


def read_tensor(f, path: Path, name: str) -> torch.Tensor:
    from safetensors import SafetensorError

    try:
        return f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({exc})") from None


def all_finite(tensor: torch.Tensor) -> bool:
    """True when a floating tensor holds no NaN / Inf. One sum, no temporary the size of the
    tensor (about 30x cheaper than `isfinite().all()` on CPU): NaN and Inf propagate into the sum.
    16-bit tensors sum in float32, so their finite values cannot overflow it; a float32 sum
    overflows only for values near 1e30 and beyond, which no trained weight holds."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    acc = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
    return bool(torch.isfinite(tensor.sum(dtype=acc)))


def require_finite(path: Path, name: str, tensor: torch.Tensor) -> None:
    """Floating tensors must hold only finite values (NaN / Inf mean corrupted data)."""
    if all_finite(tensor):
        return
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        raise CheckpointError(f"{path}: tensor {name!r} holds values so large that they sum past the float range "
                              f"(largest |value| {float(tensor.abs().max()):.3g}); the file is corrupted")
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    raise CheckpointError(f"{path}: tensor {name!r} holds {int(bad.sum())} non-finite value(s) (NaN or Inf; first at "
                          f"index {list(first)}); the file is corrupted")


def require_dtype(path: Path, name: str, tensor: torch.Tensor, *, integer: bool) -> None:
    """GPTQ integer tensors must be int32; everything else must be floating point."""
    if integer and tensor.dtype != torch.int32:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                              "GPTQ stores it as int32")
    if not integer and not tensor.is_floating_point():
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                              "expected a floating-point dtype (float16, bfloat16 or float32)")


def check_tensor(path: Path, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The dtype and finiteness checks every loaded tensor passes (name decides GPTQ int vs float)."""
    require_dtype(path, name, tensor, integer=name.endswith(GPTQ_INT_SUFFIXES))
    require_finite(path, name, tensor)
    return tensor


def read_json_file(path: Path) -> dict:
    """A JSON object file (config, shard index) or a CheckpointError naming it and the line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_file_checked(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, each checked (for readers that want them all in memory)."""
    path = Path(path)
    with open_safetensors(path) as f:
        return {name: check_tensor(path, name, read_tensor(f, path, name)) for name in f.keys()}
