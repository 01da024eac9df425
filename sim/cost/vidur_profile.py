"""Vidur's operator profiles (microsoft/vidur, `data/profiling/compute/<sku>/<model>/`), read into
the project's records. Vidur is not a dependency: only its published file layout is.

- `mlp.csv`: one row per (num_tokens, TP), `time_stats.<op>.median` in milliseconds for one call
  of one layer's operator, and the shape in `n_head, n_kv_head, n_embd, n_expanded_embd,
  vocab_size, use_gated_mlp`. See ../shared/profiles/vidur-gpu/SOURCE.md.
- `attention.csv`: rows with `is_prefill`, `batch_size`, `prefill_chunk_size`, `kv_cache_size` and
  `time_stats.attn_prefill.median` / `time_stats.attn_decode.median` (ms, one layer).

The device is the `<sku>` folder (`h100`, `a100`, ...) when the file sits in Vidur's layout.
"""

from __future__ import annotations

from pathlib import Path

from sim.cost.op_profile import (
    OpProfile,
    ProfileError,
    boolean,
    group_by_tp,
    integer,
    number,
    read_rows,
    require_columns,
    shape_of_rows,
)

# Vidur's operator names -> ours (sim.cost.layer_ops).
VIDUR_OPS = {
    "emb": "embed",
    "input_layernorm": "input_norm",
    "attn_pre_proj": "qkv_proj",
    "attn_rope": "rope",
    "attn_post_proj": "o_proj",
    "post_attention_layernorm": "post_attn_norm",
    "mlp_up_proj": "up_proj",
    "mlp_act": "act",
    "mlp_down_proj": "down_proj",
    "add": "add",
}
SHAPE_COLUMNS = {"hidden_size": "n_embd", "num_heads": "n_head", "num_kv_heads": "n_kv_head", "head_dim": None,
                 "intermediate_size": "n_expanded_embd", "vocab_size": "vocab_size", "gated_mlp": "use_gated_mlp"}
TP_COLUMN = "num_tensor_parallel_workers"
KNOWN_SKUS = ("h100", "a100", "a40", "h200", "l40s")


def device_of(path: Path) -> str | None:
    """`<sku>/<org>/<model>/file.csv` -> sku, when the folder is a GPU Vidur profiles."""
    parts = path.resolve().parts
    return parts[-4].lower() if len(parts) >= 4 and parts[-4].lower() in KNOWN_SKUS else None


def read_vidur_mlp(path: str | Path) -> list[OpProfile]:
    path = Path(path)
    header, rows = read_rows(path)
    require_columns(path, header, [c for c in SHAPE_COLUMNS.values() if c] + ["num_tokens", TP_COLUMN])
    op_columns = {ours: f"time_stats.{theirs}.median" for theirs, ours in VIDUR_OPS.items()
                  if f"time_stats.{theirs}.median" in header}
    if len(op_columns) <= ("embed" in op_columns):
        raise ProfileError(f"{path} row 1: no 'time_stats.<op>.median' columns for any layer operator "
                           f"(expected some of {[f'time_stats.{op}.median' for op in VIDUR_OPS]})")
    columns = dict(SHAPE_COLUMNS)
    # head_dim is not a column: it is n_embd / n_head. Read the others, then derive it.
    heads_col, hidden_col = columns["num_heads"], columns["hidden_size"]
    patched = []
    for i, row in enumerate(rows, start=2):
        hidden = integer(path, i, hidden_col, row.get(hidden_col))
        heads = integer(path, i, heads_col, row.get(heads_col))
        if heads == 0 or hidden % heads:
            raise ProfileError(f"{path} row {i} column {heads_col!r}: {heads} heads do not divide n_embd={hidden}")
        patched.append({**row, "_head_dim": str(hidden // heads)})
    columns["head_dim"] = "_head_dim"
    shape = shape_of_rows(path, patched, columns)
    columns["head_dim"] = f"{hidden_col}/{heads_col}"
    records = []
    for i, row in enumerate(rows, start=2):
        times = {}
        for op, col in op_columns.items():
            value = number(path, i, col, row.get(col)) * 1e-3
            if value <= 0:
                raise ProfileError(f"{path} row {i} column {col!r}: a time must be > 0, got {row.get(col)!r}")
            times[op] = value
        records.append((i, integer(path, i, TP_COLUMN, row.get(TP_COLUMN)), integer(path, i, "num_tokens", row.get("num_tokens")), times))
    device = device_of(path)

    def make(tp, tokens, seconds, file_rows):
        return OpProfile(path, path.parent.name, device, "fp16", shape, tp, tokens, seconds, file_rows, columns)

    return group_by_tp(path, records, make, TP_COLUMN, "num_tokens")


def read_vidur_attention(path: str | Path, tp: int = 1):
    """Vidur's attention.csv -> an AttentionProfile (see sim.cost.attention_profile)."""
    from sim.cost.attention_profile import AttentionProfile

    path = Path(path)
    header, rows = read_rows(path)
    need = ["n_q_head", "n_kv_head", "n_embd", TP_COLUMN, "batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill"]
    require_columns(path, header, need)
    decode, prefill = [], []
    for i, row in enumerate(rows, start=2):
        is_prefill = boolean(path, i, "is_prefill", row.get("is_prefill"))
        col = "time_stats.attn_prefill.median" if is_prefill else "time_stats.attn_decode.median"
        if col not in header:
            raise ProfileError(f"{path} row 1: column {col!r} missing (row {i} is a {'prefill' if is_prefill else 'decode'} row)")
        ms = number(path, i, col, row.get(col))
        extra = sum(number(path, i, c, row.get(c)) for c in ("time_stats.attn_kv_cache_save.median",)
                    if c in header and row.get(c) not in (None, ""))
        row_tp = integer(path, i, TP_COLUMN, row.get(TP_COLUMN))
        heads = integer(path, i, "n_q_head", row.get("n_q_head"))
        kv = integer(path, i, "kv_cache_size", row.get("kv_cache_size"))
        seconds = (ms + extra) * 1e-3
        if seconds <= 0:
            raise ProfileError(f"{path} row {i} column {col!r}: a time must be > 0, got {row.get(col)!r}")
        if is_prefill:
            prefill.append((i, row_tp, heads, integer(path, i, "prefill_chunk_size", row.get("prefill_chunk_size")), kv, seconds))
        else:
            decode.append((i, row_tp, heads, integer(path, i, "batch_size", row.get("batch_size")), kv, seconds))
    first = rows[0]
    return AttentionProfile.from_points(
        path, num_heads=integer(path, 2, "n_q_head", first["n_q_head"]),
        num_kv_heads=integer(path, 2, "n_kv_head", first["n_kv_head"]),
        head_dim=integer(path, 2, "n_embd", first["n_embd"]) // max(1, integer(path, 2, "n_q_head", first["n_q_head"])),
        decode=decode, prefill=prefill, tp_column=TP_COLUMN, tp=tp,
    )
