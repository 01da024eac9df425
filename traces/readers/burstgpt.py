"""BurstGPT CSV: `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`
(v1.2 adds `Session ID`, `Elapsed time`). `Response tokens == 0` marks a failed request: those
rows are dropped and the count is written to the table's notes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.readers._checks import int_lengths, read_csv, require_columns, times_non_decreasing
from traces.table import TraceTable

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def read(path, model: str | None = None) -> TraceTable:
    raw = read_csv(path)
    require_columns(raw, COLUMNS, path)
    times = pd.to_numeric(raw["Timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    times_non_decreasing(times, "Timestamp", path, first_line=2)
    prompt = int_lengths(raw["Request tokens"], "Request tokens", path, 2, minimum=0)
    output = int_lengths(raw["Response tokens"], "Response tokens", path, 2, minimum=0)
    keep = output > 0
    notes = [f"burstgpt: dropped {int((~keep).sum())} failed request(s) with Response tokens == 0"]
    empty_prompt = keep & (prompt == 0)
    if empty_prompt.any():
        notes.append(f"burstgpt: dropped {int(empty_prompt.sum())} request(s) with Request tokens == 0")
        keep &= prompt > 0
    if model is not None and "Model" in raw.columns:
        wrong = keep & (raw["Model"].to_numpy() != model)
        notes.append(f"burstgpt: kept Model == {model!r}, dropped {int(wrong.sum())} other request(s)")
        keep &= ~wrong
    df = pd.DataFrame(
        {
            "request_id": np.flatnonzero(keep).astype(str),  # original row index
            "arrival_s": times[keep],
            "prompt_len": prompt[keep],
            "output_len": output[keep],
        }
    )
    if "Session ID" in raw.columns:
        df["session_id"] = raw["Session ID"].to_numpy()[keep].astype(str)
    return TraceTable.from_dataframe(df, name="burstgpt", source=str(path), notes=notes)
