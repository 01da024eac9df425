"""The GPTQ algorithm (Frantar et al. 2022) for one linear layer, in plain torch.

Goal per layer: choose integer weights Q (on a per-group affine grid) minimising
||W X - Q X||^2 over calibration inputs X. With H = 2 X X^T, quantizing one column leaves an
error that the remaining (not yet quantized) columns can absorb; the optimal correction
uses the inverse Hessian. GPTQ quantizes columns in one fixed order for all rows, so:
- H^-1 is factorised once (upper Cholesky factor U of H^-1; row i of U restricted to j >= i
  is exactly the inverse-Hessian row needed when column i is quantized);
- columns are processed in lazy blocks: error feedback inside a block is rank-1, then one
  GEMM pushes the whole block's error to all later columns.

Groups: the scale/zero of a group are computed when its first column is reached, from the
weights as already corrected by earlier errors. Blocks are aligned to groups, so a group never
straddles two blocks and its parameters always see fully updated weights.

Partial groups: when K is not a multiple of `group_size` (SmolLM2: K = 576 at group 128), the
last group is simply shorter (576 = 4 * 128 + 64); G = ceil(K / group_size). This is what
GPTQModel writes and what every loader expects (g_idx[k] = k // group_size).

Act-order (`desc_act`): columns are processed by decreasing diag(H) (the most "important"
inputs first, while most columns can still absorb error); groups are formed along that
order, so g_idx becomes a non-monotone map from input row to group.

Static groups (`static_groups`): every group's scale/zero is fixed up front from the original
weights of its natural columns (k // group_size), before any error feedback. Combined with
act-order this keeps g_idx monotone (loaders need no permutation) while columns are still
processed by importance; it also keeps the grid aligned with weights that already sit on a
per-32-column grid (a model dequantized from a GGUF Q4 file).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """Result for one linear layer, in checkpoint orientation (K = in_features, N = out_features)."""

    qint: torch.Tensor        # int32 [K, N], integer codes in [0, 2**bits)
    scales: torch.Tensor      # float16 [G, N]
    zeros: torch.Tensor       # int32 [G, N], true zero points (v2 convention)
    g_idx: torch.Tensor       # int32 [K], group of each input row
    dequantized: torch.Tensor  # float32 [N, K] (nn.Linear orientation): what the quantized layer computes
    loss: float               # sum over columns of err^2 / [H^-1]_ii / 2 (the paper's objective proxy)
    damp_used: float          # fraction of mean(diag H) finally added (grows if Cholesky failed)


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero inside the block (re-entrant; torch's default, off, is restored).

    Subnormal arithmetic is ~100x slower on CPUs, and GPTQ meets it: LLM MLP inputs have huge
    outliers, which make some inverse-Hessian entries and error updates tiny.
    """
    global _flush_depth
    if _flush_depth == 0:
        torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def single_thread():
    """Run torch ops in the block on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HessianAccumulator:
    """Running H = 2/n * sum x x^T over all calibration rows seen so far (float64 for safety)."""

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1])
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HessianAccumulator: input width {x.shape[-1]} != in_features {self.in_features}")
        n = x.shape[0]
        if n == 0:
            return
        x = x.to(torch.float32).cpu()
        total = self.rows + n
        self.H *= self.rows / total
        self.H += (2.0 / total) * (x.T @ x).to(torch.float64)
        self.rows = total


def _grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero for weights w [N, c] on a `bits` grid (GPTQ's min/max rule).

    The range always includes 0; symmetric grids centre on zero = 2**(bits-1). Scales are
    rounded to float16 *before* use, so the codes chosen here are the codes the fp16
    checkpoint reproduces exactly.
    """
    maxq = 2**bits - 1
    xmin = torch.clamp(w.min(dim=1).values, max=0.0)
    xmax = torch.clamp(w.max(dim=1).values, min=0.0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    flat = (xmin == 0) & (xmax == 0)
    xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(flat, torch.full_like(xmax, 1.0), xmax)
    scale = ((xmax - xmin) / maxq).to(torch.float16)
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale).to(torch.float32)  # fp16 underflow
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale, zero


def _quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int):
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1; retries with more damping if needed."""
    mean_diag = float(torch.diag(H).mean())
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    for attempt in range(8):
        d = damp * (10.0**attempt) if attempt else damp
        try:
            L = torch.linalg.cholesky(H + d * mean_diag * eye)
            Hinv = torch.cholesky_inverse(L)
            U = torch.linalg.cholesky(Hinv, upper=True)
            return U, d
        except torch.linalg.LinAlgError:
            continue
    raise RuntimeError("GPTQ: the Hessian stayed singular even with heavy dampening "
                       "(calibration inputs to this layer are degenerate)")


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                  sym: bool = True, desc_act: bool = False, static_groups: bool = False, damp: float = 0.01,
                  block_size: int = 128) -> QuantizedWeight:
    """Quantize `weight` [N, K] (nn.Linear orientation) with Hessian `H` [K, K].

    Runs single-threaded with subnormals flushed: the column loop is thousands of small ops, where
    intra-op threads add nothing but barrier waits (6x slower measured on a busy 2-core machine).
    """
    with flush_denormals(), single_thread():
        return _gptq_quantize(weight, H, bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                              static_groups=static_groups, damp=damp, block_size=block_size)


def _gptq_quantize(weight: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int, sym: bool,
                   desc_act: bool, static_groups: bool, damp: float, block_size: int) -> QuantizedWeight:
    if weight.dim() != 2 or H.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gptq_quantize: weight {tuple(weight.shape)} and Hessian {tuple(H.shape)} disagree")
    if not 0.0 <= damp < 1.0:
        raise ValueError(f"gptq_quantize: damp must lie in [0, 1), got {damp}")
    N, K = weight.shape
    maxq = 2**bits - 1
    gs = K if group_size == -1 else group_size
    if gs <= 0:
        raise ValueError(f"gptq_quantize: group_size must be positive or -1, got {group_size}")
    # Blocks aligned to groups: a multiple of the group size near `block_size`, or the group itself.
    block = gs * max(1, block_size // gs) if gs <= block_size else gs

    W = weight.detach().to(torch.float64).clone()
    H = H.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    n_groups = math.ceil(K / gs)
    scales = torch.zeros(n_groups, N, dtype=torch.float32)
    zeros = torch.zeros(n_groups, N, dtype=torch.float32)
    if static_groups:
        for g in range(n_groups):
            scales[g], zeros[g] = _grid_params(W[:, g * gs:(g + 1) * gs].to(torch.float32), bits, sym)

    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if desc_act else torch.arange(K)
    W = W[:, perm]
    H = H[perm][:, perm]
    U, damp_used = _inverse_hessian_factor(H, damp)
    W = W.to(torch.float32)
    U = U.to(torch.float32)

    Q = torch.zeros_like(W)             # dequantized values, permuted order
    codes = torch.zeros(N, K, dtype=torch.int32)
    group_of = (perm // gs) if static_groups else (torch.arange(K) // gs)  # group of each processed column
    loss = torch.zeros(N, dtype=torch.float64)

    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1 = W[:, b0:b1].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if static_groups:
                g = int(group_of[col])
                scale, zero = scales[g], zeros[g]
            elif col % gs == 0:
                g = col // gs
                scale, zero = _grid_params(W1[:, i:i + gs], bits, sym)   # group lies inside this block
                scales[g], zeros[g] = scale, zero
            w = W1[:, i]
            d = U1[i, i]
            q, dq = _quantize_column(w, scale, zero, maxq)
            codes[:, col] = q.to(torch.int32)
            Q[:, col] = dq
            err = (w - dq) / d
            loss += (err.to(torch.float64) ** 2) / 2
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]

    invperm = torch.argsort(perm)
    g_idx = group_of[invperm].to(torch.int32)
    return QuantizedWeight(
        qint=codes[:, invperm].T.contiguous(),
        scales=scales.to(torch.float16),
        zeros=zeros.to(torch.int32),
        g_idx=g_idx,
        dequantized=Q[:, invperm].contiguous(),
        loss=float(loss.sum()),
        damp_used=damp_used,
    )


def rtn_quantize(weight: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = True) -> QuantizedWeight:
    """Round-to-nearest on the same grid (no error feedback): the baseline GPTQ must beat."""
    N, K = weight.shape
    return gptq_quantize(weight, torch.eye(K, dtype=torch.float64), bits=bits, group_size=group_size,
                         sym=sym, desc_act=False, damp=0.0)
