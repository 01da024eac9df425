"""How close any cost model that never gets cheaper with more tokens can come to a measured profile.

    python -m sim.cost.error_floor ../shared/profiles/vidur-gpu

A measured per-layer curve is not monotone: cuBLAS picks a different kernel at some token counts,
so 136 tokens can take longer than 152. A model that prices more tokens at least as high as fewer
(every roofline, fitted or not, and the profile-driven model after pooling) must then miss one of
the two points. For a pair with y_i > y_j at t_i < t_j the best such a model can do is price both
at the same p, the harmonic point that makes both relative errors equal:

    p = 2 y_i y_j / (y_i + y_j),   error = (y_i - y_j) / (y_i + y_j)

and the largest of these over every pair is a floor on the max |error| of any monotone model on
that profile. `folovllm cost validate` figures above it are the model's; below it, impossible.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ErrorFloor:
    error: float  # the least max |relative error| a non-decreasing model can reach
    tokens_high: int  # the earlier, slower token count of the worst pair ...
    tokens_low: int  # ... and the later, faster one
    seconds_high: float
    seconds_low: float


def monotone_error_floor(tokens: np.ndarray, seconds: np.ndarray) -> ErrorFloor:
    """The floor for one curve (tokens increasing), in one pass: the worst pair pairs each point
    with the slowest point before it."""
    tokens, seconds = np.asarray(tokens), np.asarray(seconds, float)
    if len(tokens) != len(seconds) or not len(tokens) or np.any(np.diff(tokens) <= 0):
        raise ValueError("monotone_error_floor needs matching, non-empty arrays with tokens increasing")
    best = ErrorFloor(0.0, int(tokens[0]), int(tokens[0]), float(seconds[0]), float(seconds[0]))
    slowest = 0
    for j in range(1, len(seconds)):
        hi, lo = seconds[slowest], seconds[j]
        error = (hi - lo) / (hi + lo)
        if error > best.error:
            best = ErrorFloor(float(error), int(tokens[slowest]), int(tokens[j]), float(hi), float(lo))
        if seconds[j] > hi:
            slowest = j
    return best


def main(argv: list[str] | None = None) -> int:
    from sim.cost.fit_laws import find_profiles

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", help="a profile file or a folder searched for mlp.csv / ops.csv")
    args = ap.parse_args(argv)
    for p in find_profiles(args.profiles):
        f = monotone_error_floor(p.tokens, p.layer_seconds())
        print(f"{p.device or '-'} {p.label} TP {p.tp}: max |error| >= {100 * f.error:.1f}% for a monotone model "
              f"({f.tokens_high} tokens {f.seconds_high * 1e3:.4f} ms, {f.tokens_low} tokens {f.seconds_low * 1e3:.4f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
