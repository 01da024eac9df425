"""Trace transforms. Each returns a new table and says what it did in the table's notes;
nothing is dropped or shortened silently."""

from __future__ import annotations

import numpy as np

from traces.table import TraceTable
from policy.utils import cdiv


def scale_rate(table: TraceTable, factor: float) -> TraceTable:
    """Run the trace at `factor` times its rate (arrival times divided by `factor`)."""
    if not factor > 0:
        raise ValueError(f"scale_rate: factor must be > 0, got {factor}")
    df = table.df.copy()
    df["arrival_s"] = df["arrival_s"] / factor
    return table.with_df(df, f"rate scaled x{factor:g}")


def window(table: TraceTable, start_s: float, end_s: float) -> TraceTable:
    """Requests arriving in [start_s, end_s), rebased so the window starts at 0."""
    if not end_s > start_s:
        raise ValueError(f"window: end_s ({end_s}) must be greater than start_s ({start_s})")
    df = table.df
    keep = (df["arrival_s"] >= start_s) & (df["arrival_s"] < end_s)
    out = df[keep].copy()
    out["arrival_s"] = out["arrival_s"] - start_s
    return table.with_df(out, f"window [{start_s:g}, {end_s:g}) s: kept {int(keep.sum())} of {len(df)} requests")


def head(table: TraceTable, n: int) -> TraceTable:
    if n < 1:
        raise ValueError(f"head: n must be >= 1, got {n}")
    out = table.df.iloc[:n]
    return table.with_df(out.copy(), f"head: kept the first {len(out)} of {len(table)} requests")


def sample(table: TraceTable, n: int, seed: int = 0) -> TraceTable:
    """A seeded random subset of `n` requests, in their original order."""
    if n < 1:
        raise ValueError(f"sample: n must be >= 1, got {n}")
    if n >= len(table):
        return table
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))
    return table.with_df(table.df.iloc[rows].copy(), f"sample: {n} of {len(table)} requests (seed {seed})")


def clip_to_max_model_len(table: TraceTable, max_model_len: int) -> TraceTable:
    """Fit every request in a model's context: prompts longer than `max_model_len - 1` are cut
    (their block hashes with them), then outputs are cut to the room left. The counts of
    clipped prompts and outputs go to the notes."""
    if max_model_len < 2:
        raise ValueError(f"clip_to_max_model_len: max_model_len must be >= 2, got {max_model_len}")
    df = table.df.copy()
    prompt = df["prompt_len"].to_numpy()
    output = df["output_len"].to_numpy()
    new_prompt = np.minimum(prompt, max_model_len - 1)
    new_output = np.minimum(output, max_model_len - new_prompt)
    n_prompt, n_output = int((new_prompt < prompt).sum()), int((new_output < output).sum())
    df["prompt_len"] = new_prompt
    df["output_len"] = new_output
    if n_prompt and "block_hashes" in df.columns:
        bs = df["hash_block_size"].to_numpy()
        df["block_hashes"] = [
            None if h is None else list(h)[: cdiv(p, b)] for h, p, b in zip(df["block_hashes"], new_prompt, bs)
        ]
    if n_prompt and "prompt_token_ids" in df.columns:
        df["prompt_token_ids"] = [None if t is None else list(t)[:p] for t, p in zip(df["prompt_token_ids"], new_prompt)]
    note = f"clipped to max_model_len={max_model_len}: {n_prompt} prompt(s) and {n_output} output(s) shortened"
    return table.with_df(df, note)
