"""Canonical JSONL / Parquet and Vidur CSV round-trips are lossless (hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.hypothesis_budget import examples

import traces
from traces.table import TraceTable

SETTINGS = settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def tables(draw, with_optional=True):
    n = draw(st.integers(1, 30))
    gaps = draw(st.lists(st.floats(0, 1e4, allow_nan=False, allow_infinity=False), min_size=n, max_size=n))
    arrivals = np.cumsum(gaps)
    arrivals -= arrivals[0]
    prompt = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    data = {"request_id": [f"r{i}" for i in range(n)], "arrival_s": arrivals, "prompt_len": prompt, "output_len": output}
    if with_optional and draw(st.booleans()):
        data["priority"] = draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n))
        data["session_id"] = [f"s{draw(st.integers(0, 3))}" for _ in range(n)]
        data["turn"] = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    if with_optional and draw(st.booleans()):
        bs = draw(st.sampled_from([16, 512]))
        data["block_hashes"] = [draw(st.lists(st.integers(0, 2**40), min_size=-(-p // bs), max_size=-(-p // bs) + 2))
                                for p in prompt]
        data["hash_block_size"] = [bs] * n
    if with_optional and draw(st.booleans()):
        data["prompt_token_ids"] = [[(i * 7 + k) % 32000 for k in range(min(p, 50))] for i, p in enumerate(prompt)]
    return TraceTable.from_dataframe(pd.DataFrame(data), name="h", source="hypothesis")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        left, right = a[col].tolist(), b[col].tolist()
        if col in ("block_hashes", "prompt_token_ids"):
            left = [list(map(int, v)) for v in left]
            right = [list(map(int, v)) for v in right]
        assert left == right, col


@SETTINGS
@given(table=tables())
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_canonical_round_trip_is_lossless(tmp_path, suffix, table):
    path = tmp_path / f"t{suffix}"
    traces.write(table, path)
    back = traces.load(path)  # auto-detected
    _same(table.df, back.df)


@SETTINGS
@given(table=tables(with_optional=False))
def test_vidur_round_trip_is_lossless(tmp_path, table):
    table = TraceTable.from_dataframe(table.df.assign(request_id=[str(i) for i in range(len(table))]))
    path = tmp_path / "t.csv"
    traces.write(table, path, format="vidur")
    back = traces.load(path)
    assert back.df["request_id"].tolist() == table.df["request_id"].tolist()
    assert back.df["arrival_s"].tolist() == table.df["arrival_s"].tolist()  # repr floats: bit-exact
    assert back.df["prompt_len"].tolist() == table.df["prompt_len"].tolist()
    assert back.df["output_len"].tolist() == table.df["output_len"].tolist()


def test_write_replaces_files_atomically_and_leaves_no_temp_files(tmp_path):
    table = traces.generate("nano-vllm", num_requests=8)
    path = tmp_path / "out.jsonl"
    path.write_text("old contents\n")
    traces.write(table, path)
    assert len(traces.load(path)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_dataframe_round_trip_and_unknown_output_suffix(tmp_path):
    table = traces.generate("shared-prefix", num_groups=2, prompts_per_group=3)
    again = TraceTable.from_dataframe(table.to_dataframe())
    _same(table.df, again.df)
    with pytest.raises(ValueError, match="cannot tell the output format"):
        traces.write(table, tmp_path / "out.txt")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_without_optional_values_round_trip_as_none(tmp_path, suffix):
    df = pd.DataFrame({"request_id": ["a", "b"], "arrival_s": [0.0, 1.5], "prompt_len": [20, 5], "output_len": [3, 4],
                       "session_id": ["s1", None], "block_hashes": [[4, 5], None], "hash_block_size": [16, 16]})
    table = TraceTable.from_dataframe(df)
    traces.write(table, tmp_path / f"t{suffix}")
    back = traces.load(tmp_path / f"t{suffix}")
    assert back.df["session_id"].tolist() == ["s1", None]
    assert [None if h is None else list(h) for h in back.df["block_hashes"]] == [[4, 5], None]
    a, b = back.iter_requests()
    assert len(a.prompt_token_ids) == 20 and len(b.prompt_token_ids) == 5
