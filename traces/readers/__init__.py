"""Trace readers, one module per format, and format auto-detection."""

from __future__ import annotations

import json
from pathlib import Path

from traces.errors import TraceFormatError

FORMATS = ("azure", "mooncake", "bailian", "burstgpt", "sharegpt", "vidur", "canonical-jsonl", "canonical-parquet")


def detect_format(path) -> str:
    """Guess a file's format from its extension and first line (the header or first record)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "canonical-parquet"
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    if head.startswith("# note: "):  # the canonical JSONL's notes header
        return "canonical-jsonl"
    first = head.lstrip().split("\n", 1)[0]
    looks_json = first.startswith(("{", "["))
    if suffix == ".csv" or ("," in first and not looks_json):
        cols = {c.strip() for c in first.split(",")}
        if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
            return "azure"
        if {"arrived_at", "num_prefill_tokens", "num_decode_tokens"} <= cols:
            return "vidur"
        if {"Timestamp", "Request tokens", "Response tokens"} <= cols:
            return "burstgpt"
        raise TraceFormatError(path, 1, f"unknown CSV header {first!r}; give --format (one of {', '.join(FORMATS)})")
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            if "arrival_s" in obj:
                return "canonical-jsonl"
            if "chat_id" in obj:
                return "bailian"
            if "input_length" in obj and "timestamp" in obj:
                return "mooncake"
        raise TraceFormatError(path, 1, f"unknown JSON Lines record {first[:120]!r}; give --format (one of {', '.join(FORMATS)})")
    if head.lstrip().startswith("[") and "conversations" in head:
        return "sharegpt"
    raise TraceFormatError(path, 1, f"cannot tell the trace format; give --format (one of {', '.join(FORMATS)})")


QUANTISED_FORMATS = ("mooncake",)  # formats whose timestamps are bucketed: arrival_mode chooses the replay


def read(path, format: str | None = None, **options):
    fmt = format or detect_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    if options.get("arrival_mode") is not None and fmt not in QUANTISED_FORMATS:
        raise ValueError(f"{path}: arrival mode {options['arrival_mode']!r} applies to traces with quantised "
                         f"timestamps ({', '.join(QUANTISED_FORMATS)}); this trace is {fmt}")
    options = {k: v for k, v in options.items() if not (k == "arrival_mode" and v is None)}
    if fmt == "azure":
        from traces.readers import azure as mod
    elif fmt == "vidur":
        from traces.readers import vidur as mod
    elif fmt == "mooncake":
        from traces.readers import mooncake as mod
    elif fmt == "bailian":
        from traces.readers import bailian as mod
    elif fmt == "burstgpt":
        from traces.readers import burstgpt as mod
    elif fmt == "sharegpt":
        from traces.readers import sharegpt as mod
    elif fmt == "canonical-jsonl":
        from traces.readers.canonical import read_jsonl

        return _read_text_format(read_jsonl, path, fmt, options)
    elif fmt == "canonical-parquet":
        from traces.readers.canonical import read_parquet

        return read_parquet(path, **options)
    else:
        raise ValueError(f"unknown trace format {fmt!r}; known formats: {', '.join(FORMATS)}")
    try:
        return mod.read(path, **options)
    except TypeError as exc:
        raise ValueError(f"{fmt} reader: {exc}") from None
    except UnicodeDecodeError:
        raise undecodable(path, fmt) from None


def _read_text_format(reader, path, fmt: str, options: dict):
    try:
        return reader(path, **options)
    except UnicodeDecodeError:
        raise undecodable(path, fmt) from None


def undecodable(path, fmt: str) -> TraceFormatError:
    """The error for a file that is not UTF-8 text, naming the absolute byte offset and the line of
    the first bad byte (a decoder's own offset is relative to whatever buffer it was reading).
    Reads the file once more, on this error path only."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return TraceFormatError(path, line, f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                                            f"cannot be decoded (read as format {fmt!r}; is that the right format?)")
    return TraceFormatError(path, None, f"not UTF-8 text (read as {fmt})")
