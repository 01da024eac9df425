"""The canonical request table every reader produces and every consumer reads.

One row per request, original order kept, arrivals rebased to 0:

    request_id, arrival_s, prompt_len, output_len          always
    priority, session_id, turn                              optional
    block_hashes + hash_block_size                          optional prefix structure
    prompt_token_ids                                        optional real tokens

Columns live in a pandas DataFrame (cheap for a million rows of numbers); `Request` objects
are made one at a time by `iter_requests`, so a large trace is never a large list of objects.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import numpy as np
import pandas as pd

from policy.request import Request
from traces.lazy_tokens import LazyTokens
from traces.synth import FIRST_TOKEN, private_tokens, tokens_from_hashes

REQUIRED = ("request_id", "arrival_s", "prompt_len", "output_len")
OPTIONAL = ("priority", "session_id", "turn", "block_hashes", "hash_block_size", "prompt_token_ids")
COLUMNS = REQUIRED + OPTIONAL
_FILLER = (FIRST_TOKEN,)


def _filler_tokens(n: int) -> array:
    return array("h", _FILLER) * n  # 2 bytes a token: values nobody reads
STREAM_CHUNK = 8192  # rows turned into Python objects at a time by iter_requests


@dataclass
class TraceTable:
    df: pd.DataFrame
    name: str = "trace"
    source: str = ""
    notes: list[str] = field(default_factory=list)  # what was dropped, clipped, approximated, and how it replays

    def __post_init__(self) -> None:
        validate_frame(self.df, self.source or self.name)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def has_prefix_structure(self) -> bool:
        return "block_hashes" in self.df.columns

    def with_df(self, df: pd.DataFrame, note: str | None = None) -> "TraceTable":
        """A derived table (transforms use this); notes accumulate."""
        notes = self.notes + ([note] if note else [])
        return TraceTable(df.reset_index(drop=True), self.name, self.source, notes)

    def iter_rows(self) -> Iterator[tuple]:
        """Rows as namedtuples (canonical column names), in arrival order, one at a time:
        the cheap way to walk a million-row table without building Request objects."""
        order = np.argsort(self.df["arrival_s"].to_numpy(), kind="stable")
        yield from self.df.iloc[order].itertuples(index=False, name="TraceRow")

    def iter_requests(
        self,
        *,
        block_size: int = 16,  # the engine's KV block size; synthesis follows the trace's own blocks, so any size sees the same sharing
        vocab_size: int = 32000,
        eos_token_id: int | None = None,
        ignore_eos: bool = True,
        max_tokens_cap: int | None = None,
        synthesize_tokens: bool = True,
        compact_tokens: bool = False,
    ) -> Iterator[Request]:
        """Policy `Request`s in arrival order, one at a time. Prompt tokens are the trace's
        own when present, else synthesised from block hashes, else private to the request.
        `max_tokens` is the trace's output length (the simulator needs it exact, hence
        `ignore_eos` by default).

        `synthesize_tokens=False` gives prompts of one repeated id instead of synthesised ones
        (about 10x cheaper to build): only for engines that never read token values, i.e. the
        simulator with prefix caching off. Real tokens in the trace are still used.
        `compact_tokens=True` (the simulator's choice) gives `traces.lazy_tokens.LazyTokens`
        prompts: synthesised only when the scheduler first reads a value, then stored as
        `array('i')` (4 bytes a token), so a long waiting queue holds lengths, not tokens.
        The default gives lists, made at once."""
        df = self.df
        order = np.argsort(df["arrival_s"].to_numpy(dtype=np.float64), kind="stable")
        columns = [c for c in ("priority", "block_hashes", "hash_block_size", "prompt_token_ids") if c in df.columns]
        # Python lists are made one chunk at a time, so a million-row table never becomes
        # a million Python objects at once (the numpy columns stay as they are).
        for lo in range(0, len(order), STREAM_CHUNK):
            rows = order[lo : lo + STREAM_CHUNK]
            ids = df["request_id"].iloc[rows].tolist()  # (to_numpy() would convert the whole column each chunk)
            arrivals = df["arrival_s"].to_numpy(dtype=np.float64)[rows].tolist()
            prompt_lens = df["prompt_len"].to_numpy(dtype=np.int64)[rows].tolist()
            output_lens = df["output_len"].to_numpy(dtype=np.int64)[rows].tolist()
            extra = {c: df[c].iloc[rows].tolist() for c in columns}
            priorities, hashes = extra.get("priority"), extra.get("block_hashes")
            hash_bs, tokens = extra.get("hash_block_size"), extra.get("prompt_token_ids")
            for i, rid in enumerate(ids):
                n = prompt_lens[i]
                given = tokens[i] if tokens is not None else None
                if given is not None and len(given):
                    prompt = [int(t) for t in given]
                elif not synthesize_tokens:
                    prompt = LazyTokens(n, partial(_filler_tokens, n)) if compact_tokens else [FIRST_TOKEN] * n
                elif hashes is not None and hashes[i] is not None and len(hashes[i]):
                    if compact_tokens:
                        prompt = LazyTokens(n, partial(tokens_from_hashes, hashes[i], int(hash_bs[i]), n, vocab_size,
                                                       compact=True))
                    else:
                        prompt = tokens_from_hashes(hashes[i], int(hash_bs[i]), n, vocab_size)
                elif compact_tokens:
                    prompt = LazyTokens(n, partial(private_tokens, rid, n, vocab_size, compact=True))
                else:
                    prompt = private_tokens(rid, n, vocab_size)
                out = output_lens[i]
                if max_tokens_cap is not None:
                    out = min(out, max_tokens_cap)
                yield Request(
                    request_id=rid,
                    prompt_token_ids=prompt,
                    max_tokens=out,
                    arrival_time=arrivals[i],
                    priority=int(priorities[i]) if priorities is not None else 0,
                    eos_token_id=eos_token_id,
                    ignore_eos=ignore_eos,
                )

    def to_requests(self, **kwargs) -> list[Request]:
        return list(self.iter_requests(**kwargs))

    def to_dataframe(self) -> pd.DataFrame:
        return self.df.copy()

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, name: str = "trace", source: str = "", notes=None) -> "TraceTable":
        return cls(normalise_frame(df, source or name), name, source, list(notes or []))


def normalise_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Canonical dtypes and column order; string request ids; arrivals rebased to 0."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing}; canonical columns are {list(COLUMNS)}")
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{where}: unknown column(s) {unknown}; canonical columns are {list(COLUMNS)}")
    out = pd.DataFrame({c: df[c] for c in COLUMNS if c in df.columns}).reset_index(drop=True)
    out["request_id"] = out["request_id"].astype(str)
    out["arrival_s"] = out["arrival_s"].astype(np.float64)
    if len(out):
        out["arrival_s"] -= out["arrival_s"].min()
    for c in ("prompt_len", "output_len"):
        out[c] = _int_column(out[c], c, where)
    for c in ("priority", "turn", "hash_block_size"):
        if c in out.columns:
            out[c] = _int_column(out[c], c, where)
    for c in ("block_hashes", "prompt_token_ids", "session_id"):
        if c in out.columns:  # rows without a value hold None (JSON and pandas may give NaN)
            out[c] = pd.Series([None if _missing(v) else v for v in out[c].tolist()], dtype=object)
    if "block_hashes" in out.columns and "hash_block_size" not in out.columns:
        raise ValueError(f"{where}: block_hashes needs hash_block_size (tokens per hash id)")
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _int_column(col: pd.Series, name: str, where: str) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{where}: row {row}: column {name!r} must be an integer, got {col.iloc[row]!r}")
    return values.astype(np.int64)


def validate_frame(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing}")
    if not df["request_id"].is_unique:
        dup = df["request_id"][df["request_id"].duplicated()].iloc[0]
        raise ValueError(f"{where}: duplicate request_id {dup!r}")
    arrivals = df["arrival_s"].to_numpy()
    if len(arrivals) and not np.isfinite(arrivals).all():
        row = int(np.flatnonzero(~np.isfinite(arrivals))[0])
        raise ValueError(f"{where}: row {row}: arrival_s is not a finite number")
    if (df["prompt_len"] < 1).any():
        row = int(np.flatnonzero((df["prompt_len"] < 1).to_numpy())[0])
        raise ValueError(f"{where}: row {row}: prompt_len must be >= 1, got {df['prompt_len'].iloc[row]}")
    if (df["output_len"] < 1).any():
        row = int(np.flatnonzero((df["output_len"] < 1).to_numpy())[0])
        raise ValueError(f"{where}: row {row}: output_len must be >= 1, got {df['output_len'].iloc[row]}")
