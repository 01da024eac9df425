"""Azure LLM inference traces (2023 Splitwise, 2024): `TIMESTAMP,ContextTokens,GeneratedTokens`.

TIMESTAMP carries 7 fractional digits (100 ns ticks), which `datetime.strptime` rejects;
pandas' ISO8601 parser reads them (and the 2024 files' zone suffix). Files have no trailing
newline; pandas does not care.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.errors import TraceFormatError
from traces.readers._checks import csv_rows_table, read_csv, require_columns, times_non_decreasing
from traces.table import TraceTable

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read(path) -> TraceTable:
    raw = read_csv(path, dtype={"TIMESTAMP": str})
    require_columns(raw, COLUMNS, path)
    try:
        stamps = pd.to_datetime(raw["TIMESTAMP"], format="ISO8601")
    except (ValueError, TypeError) as exc:
        bad = _first_bad_timestamp(raw["TIMESTAMP"])
        raise TraceFormatError(path, bad + 2 if bad is not None else None, f"unparseable TIMESTAMP: {exc}") from None
    # pandas picks the resolution from the text (7 digits -> ns, 6 -> us): pin it to ns first
    ns = stamps.dt.as_unit("ns").astype("int64").to_numpy() if stamps.notna().all() else None
    if ns is None:
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise TraceFormatError(path, row + 2, "TIMESTAMP is empty")
    seconds = (ns - ns[0]) / 1e9
    times_non_decreasing(seconds, "TIMESTAMP", path, first_line=2)
    return csv_rows_table(raw, seconds, "ContextTokens", "GeneratedTokens", path, "azure")


def _first_bad_timestamp(col: pd.Series) -> int | None:
    for i, value in enumerate(col):
        try:
            pd.to_datetime(value, format="ISO8601")
        except (ValueError, TypeError):
            return i
    return None
