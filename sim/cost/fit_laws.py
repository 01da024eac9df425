"""Fit the per-SKU operator laws (sim.cost.op_laws) to measured operator profiles.

    python -m sim.cost.fit_laws ../shared/profiles/vidur-gpu --write sim/cost/sku_laws.py

reads every profile under the folder (Vidur's `<sku>/<org>/<model>/mlp.csv` and our `ops.csv`),
groups them by GPU (the profile's device, mapped to a hardware preset name), and fits, per SKU,
one GEMM law per projection role and one law per elementwise operator, over every model and TP
degree it has (TP shards are just more matrix shapes). The fit minimises the mean squared error
in log space (log predicted / measured), so a 10 us decode kernel weighs as much as a 4 ms
prefill GEMM and being 20 % high costs what being 20 % low does. With `--write`
the coefficients become the Python module the fitted cost model reads (a handful of numbers per
SKU, like the hardware presets); the profiles themselves stay where they are.

No scipy: the three or two positive parameters of a law are fitted in log space by Nelder-Mead,
which is plenty for so few dimensions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from sim.cost.layer_ops import ELEMENTWISE_OPS, GEMM_OPS, elementwise_bytes_per_token, gemm_dims
from sim.cost.op_laws import (
    ELEMENTWISE_P_NORM,
    GEMM_P_NORM,
    SMALL_TILE_M,
    TILE_M,
    ElementwiseLaw,
    GemmLaw,
    SkuLaws,
)
from sim.cost.op_profile import OpProfile
from sim.cost.profiles import read_op_profiles
from sim.models import shard

ELEM_BYTES = 2  # the profiles this fits are 16-bit


def nelder_mead(fun, x0: np.ndarray, iters: int = 400, step: float = 0.3) -> np.ndarray:
    n = len(x0)
    simplex = [np.asarray(x0, float)] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [fun(s) for s in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        centre = np.mean(simplex[:-1], axis=0)
        reflected = centre + (centre - simplex[-1])
        fr = fun(reflected)
        if fr < values[0]:
            expanded = centre + 2 * (centre - simplex[-1])
            fe = fun(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centre + 0.5 * (simplex[-1] - centre)
            fc = fun(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0] + 0.5 * (s - simplex[0]) for s in simplex]
                values = [fun(s) for s in simplex]
    return simplex[int(np.argmin(values))]


def _gemm_vec(theta, m, k, n):
    """GemmLaw.seconds over arrays (same formula, see sim.cost.op_laws)."""
    floor, bw, fl = np.exp(theta)
    mem = (k * n + m * (k + n)) * ELEM_BYTES / bw
    tile = np.where(m <= SMALL_TILE_M, SMALL_TILE_M, TILE_M)
    comp = 2.0 * k * n * np.ceil(m / tile) * tile / fl
    return floor + (mem**GEMM_P_NORM + comp**GEMM_P_NORM) ** (1 / GEMM_P_NORM)


def _elem_vec(theta, b):
    floor, bw = np.exp(theta)
    return (floor**ELEMENTWISE_P_NORM + (b / bw) ** ELEMENTWISE_P_NORM) ** (1 / ELEMENTWISE_P_NORM)


def _log_loss(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.log(predicted / measured) ** 2))


def _samples(profiles: list[OpProfile], op: str):
    """(tokens, per-op shape arrays, seconds) for one operator over every profile that has it."""
    ms, ks, ns, bs, ys = [], [], [], [], []
    for p in profiles:
        if op not in p.seconds:
            continue
        part = shard(p.model_shape(), p.tp)
        m = p.tokens.astype(float)
        if op in GEMM_OPS:
            k, n = gemm_dims(part)[op]
            ks.append(np.full_like(m, k))
            ns.append(np.full_like(m, n))
        else:
            bs.append(m * elementwise_bytes_per_token(part, ELEM_BYTES)[op])
        ms.append(m)
        ys.append(p.seconds[op])
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return cat(ms), cat(ks), cat(ns), cat(bs), cat(ys)


def fit_sku(sku: str, profiles: list[OpProfile]) -> SkuLaws:
    """One SKU's laws from its profiles (any models, any TP degrees)."""
    gemm, elementwise = {}, {}
    for op in GEMM_OPS:
        m, k, n, _, y = _samples(profiles, op)
        if not len(y):
            raise ValueError(f"fit {sku}: no profile measures {op!r}")
        fun = lambda th: _log_loss(_gemm_vec(th, m, k, n), y)  # noqa: E731
        floor, bw, fl = np.exp(nelder_mead(fun, np.log([5e-6, 2e12, 5e14]), iters=600))
        gemm[op] = GemmLaw(float(floor), float(bw), float(fl))
    for op in ELEMENTWISE_OPS + ("embed",):
        _, _, _, b, y = _samples(profiles, op)
        if not len(y):
            continue
        fun = lambda th: _log_loss(_elem_vec(th, b), y)  # noqa: E731
        floor, bw = np.exp(nelder_mead(fun, np.log([4e-6, 1e12])))
        elementwise[op] = ElementwiseLaw(float(floor), float(bw))
    if "add" not in elementwise:
        raise ValueError(f"fit {sku}: no profile measures 'add' (the fallback streaming kernel)")
    source = ", ".join(sorted({f"{p.label}" for p in profiles}))
    return SkuLaws(sku, gemm, elementwise, source)


def sku_of(profile: OpProfile) -> str | None:
    """The hardware preset a profile's device names (h100 -> h100-sxm), or None."""
    from sim.hardware import get_hardware

    if not profile.device:
        return None
    try:
        return get_hardware(profile.device).name
    except ValueError:
        return None


def find_profiles(root: str | Path) -> list[OpProfile]:
    """Every profile file under `root` (or `root` itself), every TP degree."""
    root = Path(root)
    if root.is_file():
        return read_op_profiles(root)
    files = sorted({*root.rglob("mlp.csv"), *root.rglob("ops.csv")})
    if not files:
        raise FileNotFoundError(f"no mlp.csv or ops.csv under {root}")
    return [p for f in files for p in read_op_profiles(f)]


def fit_all(profiles: list[OpProfile]) -> dict[str, SkuLaws]:
    by_sku: dict[str, list[OpProfile]] = {}
    for p in profiles:
        sku = sku_of(p)
        if sku is not None:
            by_sku.setdefault(sku, []).append(p)
    return {sku: fit_sku(sku, ps) for sku, ps in sorted(by_sku.items())}


def render_module(laws: dict[str, SkuLaws], command: str) -> str:
    lines = [
        '"""Fitted operator laws per GPU SKU (see sim.cost.op_laws). GENERATED: do not edit by hand.',
        "",
        f"    {command}",
        '"""',
        "",
        "SKU_LAWS = {",
    ]
    for sku, law in laws.items():
        d = law.to_dict()
        lines.append(f"    {sku!r}: {{")
        lines.append(f"        'sku': {sku!r},")
        lines.append(f"        'source': {d['source']!r},")
        for group in ("gemm", "elementwise"):
            lines.append(f"        {group!r}: {{")
            for op, v in d[group].items():
                body = ", ".join(f"{k!r}: {float(x):.6g}" if isinstance(x, float) else f"{k!r}: {x!r}" for k, x in v.items())
                lines.append(f"            {op!r}: {{{body}}},")
            lines.append("        },")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", help="a profile file or a folder searched for mlp.csv / ops.csv")
    ap.add_argument("--write", default=None, help="write the coefficients module here (e.g. sim/cost/sku_laws.py)")
    args = ap.parse_args(argv)
    laws = fit_all(find_profiles(args.profiles))
    if not laws:
        print(f"no profile under {args.profiles} names a known GPU", file=sys.stderr)
        return 1
    for sku, law in laws.items():
        print(f"{sku}: fitted to {law.source}")
        for op, g in law.gemm.items():
            print(f"  {op:>14s}: floor {g.floor_s * 1e6:6.2f} us, {g.bytes_per_s / 1e12:5.2f} TB/s, {g.flops_per_s / 1e12:6.1f} TFLOP/s")
        for op, e in law.elementwise.items():
            print(f"  {op:>14s}: floor {e.floor_s * 1e6:6.2f} us, {e.bytes_per_s / 1e12:5.2f} TB/s")
    if args.write:
        cmd = "python -m sim.cost.fit_laws " + " ".join(argv if argv is not None else sys.argv[1:])
        out = Path(args.write)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(render_module(laws, cmd))
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
