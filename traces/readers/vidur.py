"""Vidur's trace-replay CSV: `arrived_at,num_prefill_tokens,num_decode_tokens` (seconds since
the first request). Also the format we write so a workload can be fed to Vidur unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.readers._checks import csv_rows_table, read_csv, require_columns, times_non_decreasing
from traces.table import TraceTable

COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def read(path) -> TraceTable:
    raw = read_csv(path)
    require_columns(raw, COLUMNS, path)
    arrived = pd.to_numeric(raw["arrived_at"], errors="coerce").to_numpy(dtype=np.float64)
    times_non_decreasing(arrived, "arrived_at", path, first_line=2)
    return csv_rows_table(raw, arrived, "num_prefill_tokens", "num_decode_tokens", path, "vidur")


def write(table: TraceTable, path) -> None:
    from traces.files import atomic_write_text

    df = table.df
    out = pd.DataFrame(
        {
            "arrived_at": df["arrival_s"].to_numpy(),
            "num_prefill_tokens": df["prompt_len"].to_numpy(),
            "num_decode_tokens": df["output_len"].to_numpy(),
        }
    )
    atomic_write_text(path, out.to_csv(index=False))
