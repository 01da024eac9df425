"""ShareGPT JSON: a list of `{"id", "conversations": [{"from": "human"|"gpt", "value": text}]}`.

Each human turn followed by a gpt turn is one request (prompt = the human text, output = the
gpt reply's length). Lengths come from a tokenizer when one is given (a local HF tokenizer
directory or tokenizer.json); otherwise they are approximated as ceil(characters / 4), the usual rule of thumb
for English BPE vocabularies, and the table's notes say so. ShareGPT has no timestamps: all
requests arrive at t=0 (an offline batch) unless a generator's arrivals are applied.
"""

from __future__ import annotations

import json

import pandas as pd

from traces.errors import TraceFormatError
from traces.table import TraceTable
from policy.utils import cdiv

CHARS_PER_TOKEN = 4


def read(path, tokenizer: str | None = None, max_requests: int | None = None) -> TraceTable:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(path, exc.lineno, f"malformed JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise TraceFormatError(path, 1, "expected a JSON list of conversations")
    count_tokens, how = _counter(tokenizer)
    rows, skipped = [], 0
    for k, conv in enumerate(data):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise TraceFormatError(path, None, f"conversation #{k}: missing 'conversations' list")
        for j in range(len(turns) - 1):
            a, b = turns[j], turns[j + 1]
            if a.get("from") == "human" and b.get("from") == "gpt":
                n_in, n_out = count_tokens(a.get("value", "")), count_tokens(b.get("value", ""))
                if n_in < 1 or n_out < 1:
                    skipped += 1
                    continue
                rows.append((f"{conv.get('id', k)}:{j}", 0.0, n_in, n_out, str(conv.get("id", k)), j // 2))
        if max_requests is not None and len(rows) >= max_requests:
            rows = rows[:max_requests]
            break
    if not rows:
        raise TraceFormatError(path, None, "no human->gpt turn pairs found")
    notes = [f"sharegpt: token lengths {how}", "sharegpt: no timestamps; every request arrives at t=0"]
    if skipped:
        notes.append(f"sharegpt: dropped {skipped} turn pair(s) with an empty prompt or reply")
    df = pd.DataFrame(rows, columns=["request_id", "arrival_s", "prompt_len", "output_len", "session_id", "turn"])
    return TraceTable.from_dataframe(df, name="sharegpt", source=str(path), notes=notes)


def _counter(tokenizer: str | None):
    if tokenizer is None:
        return (lambda text: cdiv(len(text), CHARS_PER_TOKEN)), f"APPROXIMATED as ceil(chars/{CHARS_PER_TOKEN}) (no tokenizer given)"
    from pathlib import Path

    from tokenizers import Tokenizer  # the fast-tokenizer core, without torch

    file = Path(tokenizer)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"sharegpt tokenizer: {file} not found (give a tokenizer.json or a directory holding one)")
    tok = Tokenizer.from_file(str(file))
    return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), f"counted with the tokenizer at {file}"
