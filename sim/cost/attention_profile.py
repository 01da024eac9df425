"""Measured attention timings (one layer, one GPU) and how a step's attention is priced from them.

Two tables: decode, time against (batch size, context per request); prefill, time against (chunk
length, context already cached) for one request. A plan only carries aggregates (how many prefill
rows, their tokens and cached context in total; how many decode rows and their total context), so
a step's attention is priced at the mean row: decode f(n_dec, ctx / n_dec); prefill n_pre x
g(tokens / n_pre, cached / n_pre), cached = the context before the chunks.

Our own format, `attention.csv` beside `ops.csv` (times in MILLISECONDS, one layer):
    device, dtype, num_heads, num_kv_heads, head_dim, tp, kind (prefill | decode),
    batch_size, query_len, context_len, time_ms
For decode rows `batch_size` requests of one query token each read `context_len` cached tokens;
for prefill rows one request computes `query_len` new tokens after `context_len` cached ones.
Vidur's attention.csv is read by `sim.cost.vidur_profile.read_vidur_attention`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.cost.op_profile import ProfileError, integer, number, read_rows, require_columns

OWN_FILE = "attention.csv"
OWN_COLUMNS = ("device", "dtype", "num_heads", "num_kv_heads", "head_dim", "tp", "kind", "batch_size",
               "query_len", "context_len", "time_ms")


class Grid2D:
    """Interpolate t(x, y) over scattered measurements that form rows of equal x: linear in y
    within a row, then linear in x between the two rows around the query. Beyond the last row or
    column the time grows in proportion (the work does); below the first, it is clamped."""

    def __init__(self, points: list[tuple[float, float, float]]) -> None:
        rows: dict[float, list[tuple[float, float]]] = {}
        for x, y, t in points:
            rows.setdefault(float(x), []).append((float(y), float(t)))
        self.xs = np.array(sorted(rows))
        self.rows = []
        for x in self.xs:
            pts = sorted(rows[x])
            self.rows.append((np.array([p[0] for p in pts]), np.array([p[1] for p in pts])))

    def _in_row(self, i: int, y: float) -> float:
        ys, ts = self.rows[i]
        if y > ys[-1] and ys[-1] > 0:
            return float(ts[-1] * y / ys[-1])
        return float(np.interp(y, ys, ts))

    def __call__(self, x: float, y: float) -> float:
        xs = self.xs
        if x >= xs[-1]:
            t = self._in_row(len(xs) - 1, y)
            return t * x / xs[-1] if xs[-1] > 0 else t
        if x <= xs[0]:
            return self._in_row(0, y)
        j = int(np.searchsorted(xs, x))
        lo, hi = self._in_row(j - 1, y), self._in_row(j, y)
        w = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
        return lo + w * (hi - lo)


@dataclass
class AttentionProfile:
    path: Path
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tp: int
    decode: Grid2D | None  # (batch, context per request) -> seconds
    prefill: Grid2D | None  # (query tokens, cached context) -> seconds, one request

    @classmethod
    def from_points(cls, path, *, num_heads, num_kv_heads, head_dim, decode, prefill, tp_column, tp: int = 1):
        """decode / prefill: (row, tp, heads, x, y, seconds) tuples; keeps the rows at `tp`."""
        dec = [(x, y, s) for _, t, _, x, y, s in decode if t == tp]
        pre = [(x, y, s) for _, t, _, x, y, s in prefill if t == tp]
        if not dec and not pre:
            have = sorted({t for _, t, *_ in decode + prefill})
            raise ProfileError(f"{path} column {tp_column!r}: no rows for tensor-parallel degree {tp} (the file has {have})")
        return cls(Path(path), num_heads, num_kv_heads, head_dim, tp, Grid2D(dec) if dec else None,
                   Grid2D(pre) if pre else None)

    def check_model(self, model, tp: int) -> None:
        for name, have, want in (("num_heads", self.num_heads, model.num_heads),
                                 ("num_kv_heads", self.num_kv_heads, model.num_kv_heads),
                                 ("head_dim", self.head_dim, model.head_dim)):
            if have != want:
                raise ProfileError(f"{self.path} row 2 column {name!r}: the attention profile was measured for "
                                   f"{name}={have}, but model {model.name!r} has {name}={want}")

    def seconds(self, n_pre: int, pre_tok: int, pre_cached: int, n_dec: int, dec_ctx: int) -> float:
        """One layer's attention for a plan's aggregates (see the module doc): `pre_cached` is the
        prefill rows' context cached BEFORE their chunks (the profile's prefill `context_len`,
        Vidur's `kv_cache_size`), not the step shape's context after the step; `dec_ctx` is the
        decode rows' context including the token being decoded. 0 for parts the profile does not
        cover is never silently returned: a missing table raises."""
        t = 0.0
        if n_dec:
            if self.decode is None:
                raise ProfileError(f"{self.path}: no decode rows, but the plan has decodes")
            t += self.decode(n_dec, dec_ctx / n_dec)
        if n_pre:
            if self.prefill is None:
                raise ProfileError(f"{self.path}: no prefill rows, but the plan has prefills")
            t += n_pre * self.prefill(pre_tok / n_pre, pre_cached / n_pre)
        return t


def read_own_attention(path: str | Path, tp: int = 1) -> AttentionProfile:
    path = Path(path)
    header, rows = read_rows(path)
    require_columns(path, header, OWN_COLUMNS)
    decode, prefill = [], []
    for i, row in enumerate(rows, start=2):
        kind = row["kind"].strip().lower()
        if kind not in ("prefill", "decode"):
            raise ProfileError(f"{path} row {i} column 'kind': {row['kind']!r} is neither 'prefill' nor 'decode'")
        seconds = number(path, i, "time_ms", row.get("time_ms")) * 1e-3
        if seconds <= 0:
            raise ProfileError(f"{path} row {i} column 'time_ms': a time must be > 0, got {row.get('time_ms')!r}")
        t = integer(path, i, "tp", row.get("tp"))
        ctx = integer(path, i, "context_len", row.get("context_len"))
        if kind == "decode":
            decode.append((i, t, 0, integer(path, i, "batch_size", row.get("batch_size")), ctx, seconds))
        else:
            prefill.append((i, t, 0, integer(path, i, "query_len", row.get("query_len")), ctx, seconds))
    first = rows[0]
    return AttentionProfile.from_points(
        path, num_heads=integer(path, 2, "num_heads", first["num_heads"]),
        num_kv_heads=integer(path, 2, "num_kv_heads", first["num_kv_heads"]),
        head_dim=integer(path, 2, "head_dim", first["head_dim"]), decode=decode, prefill=prefill, tp_column="tp", tp=tp,
    )


def write_own_attention(path: str | Path, *, device: str, dtype: str, model, tp: int,
                        decode: list[tuple[int, int, float]], prefill: list[tuple[int, int, float]]) -> Path:
    """Write attention.csv atomically. decode: (batch, context, seconds); prefill: (query, context, seconds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fixed = [device, dtype, model.num_heads, model.num_kv_heads, model.head_dim, tp]
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(OWN_COLUMNS)
        for batch, ctx, seconds in decode:
            writer.writerow([*fixed, "decode", batch, 1, ctx, f"{seconds * 1e3:.6g}"])
        for query, ctx, seconds in prefill:
            writer.writerow([*fixed, "prefill", 1, query, ctx, f"{seconds * 1e3:.6g}"])
    os.replace(tmp, path)
    return path
