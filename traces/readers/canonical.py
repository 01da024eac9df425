"""Our own format: the canonical table as JSON Lines (one request per line) or Parquet."""

from __future__ import annotations

import json
import math

import pandas as pd

from traces.errors import TraceFormatError
from traces.readers._checks import NOTE_PREFIX, iter_json_lines

PARQUET_NOTES_KEY = b"folovllm.notes"  # schema metadata: the trace's notes as a JSON list
from traces.table import COLUMNS, REQUIRED, TraceTable


def read_jsonl(path) -> TraceTable:
    rows = []
    notes: list[str] = []
    for lineno, obj in iter_json_lines(path, notes=notes):
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
    return TraceTable.from_dataframe(df, name="canonical", source=str(path), notes=notes)


def read_parquet(path) -> TraceTable:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError; it does not name the file
        raise TraceFormatError(path, None, f"not a readable Parquet file ({exc})") from None
    for col in ("block_hashes", "prompt_token_ids"):
        if col in df.columns:
            df[col] = [None if v is None else [int(x) for x in v] for v in df[col]]
    try:
        return TraceTable.from_dataframe(df, name="canonical", source=str(path), notes=_parquet_notes(path))
    except ValueError as exc:
        raise TraceFormatError(path, None, str(exc)) from None


def _parquet_notes(path) -> list[str]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PARQUET_NOTES_KEY)
    if raw is None:
        return []
    try:
        notes = json.loads(raw)
    except ValueError:
        raise TraceFormatError(path, None, f"schema metadata {PARQUET_NOTES_KEY.decode()} is not JSON") from None
    return [str(n) for n in notes] if isinstance(notes, list) else []


def write_jsonl(table: TraceTable, path) -> None:
    """One JSON object per request, after the table's notes as `# note: ...` lines (so a
    converted trace still says how it was made, e.g. which Mooncake arrival mode ran)."""
    from traces.files import atomic_write_text

    df = table.df
    records = df.to_dict(orient="records")
    lines = [NOTE_PREFIX + " ".join(str(note).splitlines()) for note in table.notes]
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

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table.df, preserve_index=False)
    if table.notes:
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                               PARQUET_NOTES_KEY: json.dumps(list(table.notes)).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
