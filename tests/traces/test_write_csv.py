"""`traces.metrics.write_table` writes CSV byte for byte as `DataFrame.to_csv(index=False,
lineterminator="\\n")` does (the format every earlier result file has), on the values where
float formatting, missing values and quoting could differ."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from traces import metrics

FLOATS = [0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-5, 1e-4, 123456789.123456789, 1e16, 1e15, 2.5e-300, 1.7976931348623157e308,
          5e-324, -2.75, math.inf, -math.inf, 0.026020873806473138, 4.314579]


def pandas_bytes(df: pd.DataFrame, tmp_path) -> bytes:
    path = tmp_path / "pandas.csv"
    df.to_csv(path, index=False, lineterminator="\n")
    return path.read_bytes()


def ours_bytes(df: pd.DataFrame, tmp_path) -> bytes:
    return metrics.write_table(df, tmp_path / "ours.csv").read_bytes()


@pytest.mark.parametrize("n", [0, 1, len(FLOATS), 5000])
def test_numeric_tables(tmp_path, n):
    rng = np.random.default_rng(n)
    floats = (FLOATS * (n // len(FLOATS) + 1))[:n]
    df = pd.DataFrame({
        "step_id": np.arange(n, dtype=np.int64),
        "start_s": np.asarray(floats, dtype=np.float64),
        "duration_s": rng.random(n),
        "kv_usage": rng.integers(0, 7, n) / 7,  # few distinct values: formatted once each
        "count": rng.integers(-3, 3, n),
        "big": rng.integers(-(1 << 62), 1 << 62, n),
        "flag": rng.random(n) < 0.5,
    })
    assert ours_bytes(df, tmp_path) == pandas_bytes(df, tmp_path)


def test_missing_values_and_text_that_needs_quoting(tmp_path):
    df = pd.DataFrame({
        "request_id": ["a", "b,c", 'say "hi"', "line\nbreak", "", "é", "tab\there", " lead"],
        "status": pd.Series(["finished", None, "rejected", "finished", None, "aborted", "finished", "x"], dtype=object),
        "ttft_s": [0.5, math.nan, 1e-7, 2.0, math.nan, 0.0, -0.0, 1e20],
        "all_missing": [math.nan] * 8,
        "n": np.arange(8, dtype=np.int64),
    })
    assert ours_bytes(df, tmp_path) == pandas_bytes(df, tmp_path)


def test_many_rows_with_few_distinct_floats_keep_the_sign_of_zero(tmp_path):
    values = np.array([0.0, -0.0, 0.5] * 400)
    df = pd.DataFrame({"x": values, "y": np.zeros(1200)})
    assert ours_bytes(df, tmp_path) == pandas_bytes(df, tmp_path)


def test_other_column_types_are_written_by_pandas(tmp_path):
    df = pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"]), "c": pd.Categorical(["x", "y"]),
                       "s": pd.array(["a", None], dtype="string"), "n": [1, 2],
                       "f32": np.array([0.1, 1 / 3], dtype=np.float32)})
    assert ours_bytes(df, tmp_path) == pandas_bytes(df, tmp_path)
