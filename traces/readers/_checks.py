"""Shared row checks: every failure names the file, the 1-based line and the reason."""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.errors import TraceFormatError
from traces.table import TraceTable


def require_columns(df: pd.DataFrame, columns, path, header_line: int = 1) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TraceFormatError(path, header_line, f"missing column(s) {missing}; found {list(df.columns)}")


def int_lengths(values, name: str, path, first_line: int, minimum: int = 0) -> np.ndarray:
    """Integer token counts: NaN, non-integers and values below `minimum` are errors."""
    numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numeric) | (numeric != np.floor(numeric)) | (numeric < minimum)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raw = pd.Series(values).iloc[row]
        shown = repr(raw) if isinstance(raw, str) else str(raw)
        if isinstance(raw, str) or not np.isfinite(numeric[row]):
            why = "missing or not a number" if not np.isfinite(numeric[row]) else "not an integer"
        elif numeric[row] != np.floor(numeric[row]):
            why = "not an integer"
        else:
            why = f"below the minimum {minimum}" + (" (negative)" if numeric[row] < 0 else "")
        raise TraceFormatError(path, first_line + row, f"{name}={shown}: {why}; token counts must be integers >= {minimum}")
    return numeric.astype(np.int64)


def times_non_decreasing(times: np.ndarray, name: str, path, first_line: int) -> None:
    if not np.isfinite(times).all():
        row = int(np.flatnonzero(~np.isfinite(times))[0])
        raise TraceFormatError(path, first_line + row, f"{name} is missing or not a number")
    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        row = int(back[0]) + 1
        raise TraceFormatError(
            path, first_line + row, f"{name} goes backwards ({times[row]} after {times[row - 1]}); traces must be in arrival order"
        )


def read_csv(path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.ParserError as exc:
        raise TraceFormatError(path, None, f"malformed CSV: {exc}") from None
    except pd.errors.EmptyDataError:
        raise TraceFormatError(path, 1, "file is empty") from None


NOTE_PREFIX = "# note: "


def iter_json_lines(path, notes: list | None = None):
    """(line number, parsed object) for each non-blank line; malformed JSON is an error.

    With a `notes` list, lines starting with `#` are comments (the canonical JSONL keeps a
    trace's notes as `# note: ...` lines at the top) and each note's text is appended to it."""
    import json

    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if notes is not None and line.startswith("#"):
                if line.startswith(NOTE_PREFIX):
                    notes.append(line[len(NOTE_PREFIX):].rstrip("\n"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(path, lineno, f"malformed JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def field(obj: dict, key: str, path, lineno: int):
    try:
        return obj[key]
    except KeyError:
        raise TraceFormatError(path, lineno, f"missing field {key!r}") from None


def csv_rows_table(raw: pd.DataFrame, arrival_s: np.ndarray, prompt_col: str, output_col: str, path,
                   name: str) -> TraceTable:
    """One request per CSV row (ids in row order; data starts on line 2), both lengths checked >= 1."""
    df = pd.DataFrame(
        {
            "request_id": np.arange(len(raw)).astype(str),
            "arrival_s": arrival_s,
            "prompt_len": int_lengths(raw[prompt_col], prompt_col, path, 2, minimum=1),
            "output_len": int_lengths(raw[output_col], output_col, path, 2, minimum=1),
        }
    )
    return TraceTable.from_dataframe(df, name=name, source=str(path))
