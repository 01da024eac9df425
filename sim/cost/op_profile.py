"""Measured per-operator timings of one decoder layer: the record, and the project's own format.

A profile says how long each operator of one layer (`sim.cost.layer_ops`) took on one GPU for a
number of tokens, for one model shape and one tensor-parallel degree. Two file formats are read
into the same record: Vidur's `mlp.csv` (`sim.cost.vidur_profile`) and ours, `ops.csv`, which
`folovllm profile` writes:

    ops.csv -- one row per (tp, num_tokens); times are MILLISECONDS for one call, one layer
      device             e.g. "h100", "cpu" (free text; the fitted model keys its SKUs by it)
      dtype              "bf16", "fp16" or "fp32"
      hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size, vocab_size
                         the full model's shape (not the shard)
      gated_mlp          1 / 0 (also true / false)
      tp                 tensor-parallel degree the row was measured at
      num_tokens         rows in the batch (prefill and decode tokens alike)
      <op>_ms            one column per operator measured, <op> in
                         embed (once per step), input_norm, qkv_proj, rope, o_proj, post_attn_norm,
                         up_proj (gate+up when gated), act, down_proj, add (the layer's residual adds)

A layer's time is the sum of its operators' columns (each counted once); rows repeating a
(tp, num_tokens) are averaged. Bad input raises a
`ProfileError` naming the file, the row (1 = header) and the column.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.cost.layer_ops import ALL_OPS, LAYER_OPS
from sim.models import ModelShape

OWN_FILE = "ops.csv"
SHAPE_COLUMNS = ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size", "gated_mlp")
OWN_COLUMNS = ("device", "dtype", *SHAPE_COLUMNS, "tp", "num_tokens")


class ProfileError(ValueError):
    """A profile file that cannot be used as it is; the message names file, row and column."""


@dataclass(frozen=True)
class ProfileShape:
    """The model shape a profile was measured for, as its own columns state it."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool

    def model_shape(self, name: str, num_layers: int = 1) -> ModelShape:
        return ModelShape(name, num_layers, self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                          self.intermediate_size, self.vocab_size, False, gated_mlp=self.gated_mlp)


@dataclass
class OpProfile:
    path: Path
    label: str  # the model it was measured for (folder name or file stem)
    device: str | None
    dtype: str | None
    shape: ProfileShape
    tp: int
    tokens: np.ndarray  # sorted token counts
    seconds: dict[str, np.ndarray]  # op -> seconds per call at each token count
    rows: np.ndarray = field(repr=False)  # file row of each token count (header = 1)
    columns: dict[str, str] = field(default_factory=dict, repr=False)  # shape field -> column name in the file

    @property
    def layer_ops(self) -> tuple[str, ...]:
        return tuple(op for op in LAYER_OPS if op in self.seconds)

    def layer_seconds(self) -> np.ndarray:
        """One layer's measured time at each token count: the sum of its operators."""
        return sum(self.seconds[op] for op in self.layer_ops)

    def model_shape(self, num_layers: int = 1) -> ModelShape:
        return self.shape.model_shape(self.label, num_layers)

    def without(self, index: int) -> "OpProfile":
        """The same profile minus one token count (for leave-one-point-out checks)."""
        keep = np.arange(len(self.tokens)) != index
        return OpProfile(self.path, self.label, self.device, self.dtype, self.shape, self.tp, self.tokens[keep],
                         {op: t[keep] for op, t in self.seconds.items()}, self.rows[keep], self.columns)

    def check_model(self, model: ModelShape) -> None:
        """Raise unless `model` (the full model) has the shape this profile was measured for."""
        want = {"hidden_size": model.hidden_size, "num_heads": model.num_heads, "num_kv_heads": model.num_kv_heads,
                "head_dim": model.head_dim, "intermediate_size": model.intermediate_size,
                "gated_mlp": model.gated_mlp}
        for name, value in want.items():
            have = getattr(self.shape, name)
            if have != value:
                column = self.columns.get(name, name)
                raise ProfileError(
                    f"{self.path} row {int(self.rows[0])} column {column!r}: the profile was measured for "
                    f"{name}={have}, but model {model.name!r} has {name}={value}"
                )


def select_tp(profiles: list[OpProfile], tp: int, path: Path, tp_column: str) -> OpProfile:
    for profile in profiles:
        if profile.tp == tp:
            return profile
    have = ", ".join(str(p.tp) for p in profiles)
    raise ProfileError(f"{path} column {tp_column!r}: no rows for tensor-parallel degree {tp} (the file has {have})")


# -- reading cells -----------------------------------------------------------------------


def number(path: Path, row: int, column: str, text: str | None) -> float:
    """A finite number from a CSV cell, or a ProfileError naming where it is."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ProfileError(f"{path} row {row} column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ProfileError(f"{path} row {row} column {column!r}: {text!r} is not a finite number")
    return value


def integer(path: Path, row: int, column: str, text: str | None) -> int:
    value = number(path, row, column, text)
    if value != int(value) or value < 0:
        raise ProfileError(f"{path} row {row} column {column!r}: {text!r} is not a non-negative whole number")
    return int(value)


def boolean(path: Path, row: int, column: str, text: str | None) -> bool:
    key = str(text).strip().lower()
    if key in ("1", "true", "yes"):
        return True
    if key in ("0", "false", "no"):
        return False
    raise ProfileError(f"{path} row {row} column {column!r}: {text!r} is not a boolean (true/false, 1/0)")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"profile {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not header:
        raise ProfileError(f"{path}: empty file (no header row)")
    if not rows:
        raise ProfileError(f"{path}: header only, no measurements")
    return header, rows


def require_columns(path: Path, header: list[str], columns) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ProfileError(f"{path} row 1: column(s) {missing} missing (the header has {len(header)} columns)")


def group_by_tp(path: Path, records: list[tuple[int, int, int, dict[str, float]]], make, tp_column: str,
                tokens_column: str) -> list[OpProfile]:
    """records: (row, tp, tokens, {op: seconds}) -> one OpProfile per TP (via `make`)."""
    by_tp: dict[int, dict[int, tuple[int, list[dict[str, float]]]]] = {}
    for row, tp, tokens, times in records:
        if tp < 1:
            raise ProfileError(f"{path} row {row} column {tp_column!r}: tensor-parallel degree must be >= 1")
        if tokens < 1:
            raise ProfileError(f"{path} row {row} column {tokens_column!r}: token count must be >= 1")
        # Repeated measurements of one (tp, tokens) (Vidur's files have a few) are averaged.
        by_tp.setdefault(tp, {}).setdefault(tokens, (row, []))[1].append(times)
    by_tp = {tp: {k: (r, _mean_times(ts)) for k, (r, ts) in rows.items()} for tp, rows in by_tp.items()}
    out = []
    for tp in sorted(by_tp):
        items = sorted(by_tp[tp].items())
        ops = [op for op in ALL_OPS if all(op in t for _, (_, t) in items)]
        out.append(make(tp, np.array([k for k, _ in items]), {op: np.array([t[op] for _, (_, t) in items]) for op in ops},
                        np.array([r for _, (r, _) in items])))
    return out


def _mean_times(repeats: list[dict[str, float]]) -> dict[str, float]:
    ops = set.intersection(*(set(t) for t in repeats))
    return {op: sum(t[op] for t in repeats) / len(repeats) for op in ops}


def shape_of_rows(path: Path, rows: list[dict[str, str]], columns: dict[str, str]) -> ProfileShape:
    """The model shape from the first data row, checked to be the same on every row."""
    def read(i: int, row: dict[str, str]) -> tuple:
        values = []
        for name in SHAPE_COLUMNS:
            col = columns[name]
            if col is None:
                values.append(None)
            elif name == "gated_mlp":
                values.append(boolean(path, i, col, row.get(col)))
            else:
                values.append(integer(path, i, col, row.get(col)))
        return tuple(values)

    first = read(2, rows[0])
    for i, row in enumerate(rows[1:], start=3):
        values = read(i, row)
        for name, a, b in zip(SHAPE_COLUMNS, first, values):
            if a != b:
                raise ProfileError(f"{path} row {i} column {columns[name]!r}: {b} differs from {a} in row 2 "
                                   "(one profile file holds one model shape)")
    return ProfileShape(*first)


# -- the project's own format --------------------------------------------------------------


def read_own(path: Path) -> list[OpProfile]:
    header, rows = read_rows(path)
    require_columns(path, header, OWN_COLUMNS)
    op_columns = {op: f"{op}_ms" for op in ALL_OPS if f"{op}_ms" in header}
    if not any(op in op_columns for op in LAYER_OPS):
        raise ProfileError(f"{path} row 1: no operator columns; expected some of {[f'{op}_ms' for op in LAYER_OPS]}")
    shape = shape_of_rows(path, rows, {name: name for name in SHAPE_COLUMNS})
    device, dtype = rows[0]["device"].strip() or None, rows[0]["dtype"].strip() or None
    records = []
    for i, row in enumerate(rows, start=2):
        times = {op: number(path, i, col, row.get(col)) * 1e-3 for op, col in op_columns.items()}
        for op, value in times.items():
            if value <= 0:
                raise ProfileError(f"{path} row {i} column {op_columns[op]!r}: a time must be > 0, got {row[op_columns[op]]!r}")
        records.append((i, integer(path, i, "tp", row.get("tp")), integer(path, i, "num_tokens", row.get("num_tokens")), times))

    def make(tp, tokens, seconds, file_rows):
        return OpProfile(path, path.parent.name or path.stem, device, dtype, shape, tp, tokens, seconds, file_rows,
                         {name: name for name in SHAPE_COLUMNS})

    return group_by_tp(path, records, make, "tp", "num_tokens")


def write_own(path: str | Path, *, device: str, dtype: str, model: ModelShape, tp: int,
              measurements: list[tuple[int, dict[str, float]]]) -> Path:
    """Write `measurements` [(num_tokens, {op: seconds})] as ops.csv, atomically."""
    path = Path(path)
    ops = [op for op in ALL_OPS if all(op in m for _, m in measurements)]
    header = [*OWN_COLUMNS, *(f"{op}_ms" for op in ops)]
    fixed = [device, dtype, model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim,
             model.intermediate_size, model.vocab_size, int(model.gated_mlp), tp]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for tokens, times in sorted(measurements):
            writer.writerow([*fixed, tokens, *(f"{times[op] * 1e3:.6g}" for op in ops)])
    os.replace(tmp, path)
    return path


# -- any supported file or folder ---------------------------------------------------------------


def profile_file(path: str | Path) -> Path:
    """The operator profile file a path names: the file itself, or ops.csv / mlp.csv in a folder."""
    path = Path(path)
    if path.is_dir():
        for name in (OWN_FILE, "mlp.csv"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"profile folder {path}: no {OWN_FILE} (ours) or mlp.csv (Vidur's) in it")
    if not path.is_file():
        raise FileNotFoundError(f"profile {path} does not exist")
    return path
