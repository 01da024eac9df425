"""Qwen-Bailian JSONL: `{"chat_id", "parent_chat_id" (-1 = root), "timestamp" (s), "input_length",
"output_length", "type", "turn", "hash_ids"}` with 16-token hash blocks. A session is the
tree under a root chat; every request's session_id is its root's chat_id."""

from __future__ import annotations

import pandas as pd

from traces.errors import TraceFormatError
from traces.readers._checks import field, iter_json_lines
from traces.table import TraceTable
from policy.utils import cdiv

HASH_BLOCK_SIZE = 16


def read(path) -> TraceTable:
    rows = []
    root_of: dict[str, str] = {}
    last_t = None
    for lineno, obj in iter_json_lines(path):
        chat = str(field(obj, "chat_id", path, lineno))
        parent = str(obj.get("parent_chat_id", -1))
        t = field(obj, "timestamp", path, lineno)
        n_in = field(obj, "input_length", path, lineno)
        n_out = field(obj, "output_length", path, lineno)
        for name, value in (("timestamp", t), ("input_length", n_in), ("output_length", n_out)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value < 0:
                raise TraceFormatError(path, lineno, f"{name}={value!r} must be a non-negative number")
        if int(n_in) < 1 or int(n_out) < 1:
            raise TraceFormatError(path, lineno, f"input_length and output_length must be >= 1, got {n_in}, {n_out}")
        if last_t is not None and t < last_t:
            raise TraceFormatError(path, lineno, f"timestamp goes backwards ({t} after {last_t})")
        last_t = t
        if chat in root_of:
            raise TraceFormatError(path, lineno, f"duplicate chat_id {chat!r}")
        root_of[chat] = chat if parent in ("-1", "None") else root_of.get(parent, parent)
        hashes = obj.get("hash_ids") or None
        if hashes and len(hashes) < cdiv(int(n_in), HASH_BLOCK_SIZE):
            raise TraceFormatError(path, lineno, f"{len(hashes)} hash_ids cannot cover input_length={n_in}")
        rows.append((chat, float(t), int(n_in), int(n_out), root_of[chat], int(obj.get("turn", 0)), hashes))
    if not rows:
        raise TraceFormatError(path, None, "no requests in file")
    df = pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_len", "output_len", "session_id", "turn", "block_hashes"])
    df["hash_block_size"] = HASH_BLOCK_SIZE
    return TraceTable.from_dataframe(df, name="bailian", source=str(path))
