"""Loading and writing traces; every file is written atomically (temp file, then rename)."""

from __future__ import annotations

from pathlib import Path

from traces.files import atomic_path, atomic_write_text  # noqa: F401 (re-exported for callers)
from traces.readers import FORMATS, read
from traces.table import TraceTable

WRITE_FORMATS = ("canonical-jsonl", "canonical-parquet", "vidur")


def load(path, format: str | None = None, **reader_options) -> TraceTable:
    """Read a trace file (format auto-detected unless given) into the canonical table."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; known formats: {', '.join(FORMATS)}")
    return read(path, format, **reader_options)


def write(table: TraceTable, path, format: str | None = None) -> str:
    """Write `table`; the format follows the extension (.jsonl, .parquet; .csv = Vidur)."""
    fmt = format or _format_from_suffix(path)
    if fmt == "canonical-jsonl":
        from traces.readers.canonical import write_jsonl as writer
    elif fmt == "canonical-parquet":
        from traces.readers.canonical import write_parquet as writer
    elif fmt == "vidur":
        from traces.readers.vidur import write as writer
    else:
        raise ValueError(f"cannot write format {fmt!r}; writable formats: {', '.join(WRITE_FORMATS)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer(table, path)
    return fmt


def _format_from_suffix(path) -> str:
    suffix = Path(path).suffix.lower()
    formats = {".jsonl": "canonical-jsonl", ".parquet": "canonical-parquet", ".csv": "vidur"}
    if suffix not in formats:
        raise ValueError(f"{path}: cannot tell the output format from {suffix!r}; use .jsonl, .parquet or .csv (Vidur)")
    return formats[suffix]
