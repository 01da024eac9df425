"""Non-finite numbers never pass as results.

A NaN logit row samples token 0 for ever (argmax of NaNs) and turns a perplexity into `nan`;
both used to end with exit code 0. The checks here stop the computation at the first
non-finite value and say where it appeared: which step and which request, or which tokens.
One sum per step (a reduction over the logits the sampler reads anyway) finds them; the rows
at fault are looked up only when it is not finite.
"""

from __future__ import annotations

from typing import Sequence

import torch

from executor.errors import NonFiniteError

__all__ = ["NonFiniteError", "check_finite_result", "check_step_logits"]


def check_step_logits(logits: torch.Tensor, *, step: int | None, request_ids: Sequence[str]) -> None:
    """Raise NonFiniteError if any row of `logits` [N, vocab] holds NaN or Inf.

    `request_ids[i]` names row i; `step` is the engine step counter (None when unknown)."""
    if logits.numel() == 0 or bool(torch.isfinite(logits.sum(dtype=torch.float32))):
        return  # the common case: one reduction, no [N, vocab] temporary
    finite_rows = torch.isfinite(logits).all(dim=-1)
    if bool(finite_rows.all()):
        return  # finite, only their sum overflowed
    bad = [int(i) for i in (~finite_rows).nonzero().flatten().tolist()]
    names = [str(request_ids[i]) if i < len(request_ids) else f"row {i}" for i in bad]
    where = f"step {step}" if step is not None else "this step"
    raise NonFiniteError(
        f"non-finite logits (NaN or Inf) at {where} for request(s) {', '.join(names[:8])}"
        f"{' ...' if len(names) > 8 else ''}; generation stopped (corrupted weights or a numerical overflow)"
    )


def check_finite_result(name: str, value: float, what: str) -> float:
    """A headline number (perplexity, KL) must be finite before it is printed as a result."""
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteError(f"{what}: {name} is {value}; refusing to report a non-finite result")
    return value
