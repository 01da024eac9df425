"""Our own format: the canonical table as JSON Lines (one request per line) or Parquet."""

from __future__ import annotations

import json
import math

import pandas as pd

from traces.errors import TraceFormatError
from traces.readers._checks import iter_json_lines
from traces.table import COLUMNS, REQUIRED, TraceTable


def read_jsonl(path) -> TraceTable:
    rows = []
    for lineno, obj in iter_json_lines(path):
        unknown = [k for k in obj if k not in COLUMNS]
        if unknown:
            raise TraceFormatError(path, lineno, f"unknown field(s) {unknown}; canonical fields are {list(COLUMNS)}")
        for key in REQUIRED:
            if key not in obj:
                raise TraceFormatError(path, lineno, f"missing field {key!r}")
        for key in ("prompt_len", "output_len"):
            value = obj[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TraceFormatError(path, lineno, f"{key}={value!r} must be an integer >= 1")
        t = obj["arrival_s"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            raise TraceFormatError(path, lineno, f"arrival_s={t!r} must be a finite number >= 0")
        if rows and t < rows[-1]["arrival_s"]:
            raise TraceFormatError(path, lineno, f"arrival_s goes backwards ({t} after {rows[-1]['arrival_s']})")
        rows.append(obj)
    if not rows:
        raise TraceFormatError(path, None, "no requests in file")
    df = pd.DataFrame(rows)
    return TraceTable.from_dataframe(df, name="canonical", source=str(path))


def read_parquet(path) -> TraceTable:
    df = pd.read_parquet(path)
    for col in ("block_hashes", "prompt_token_ids"):
        if col in df.columns:
            df[col] = [None if v is None else [int(x) for x in v] for v in df[col]]
    try:
        return TraceTable.from_dataframe(df, name="canonical", source=str(path))
    except ValueError as exc:
        raise TraceFormatError(path, None, str(exc)) from None


def write_jsonl(table: TraceTable, path) -> None:
    from traces.files import atomic_write_text

    df = table.df
    records = df.to_dict(orient="records")
    lines = []
    for rec in records:
        clean = {}
        for key, value in rec.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if hasattr(value, "tolist"):
                value = value.tolist()
            elif hasattr(value, "item"):
                value = value.item()
            clean[key] = value
        lines.append(json.dumps(clean, separators=(",", ":")))
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_parquet(table: TraceTable, path) -> None:
    from traces.files import atomic_path

    with atomic_path(path) as tmp:
        table.df.to_parquet(tmp, index=False)
