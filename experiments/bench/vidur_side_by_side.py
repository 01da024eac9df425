"""Put one `folovllm sim` run and one Vidur run of the same requests side by side.

    python -m experiments.bench.vidur_side_by_side OURS_RUN_DIR VIDUR_RUN [--label NAME]

OURS_RUN_DIR: the `--out` folder of `folovllm sim` (its requests.csv or requests.parquet).
VIDUR_RUN: Vidur's `request_metrics.csv`, or the run folder that holds it (searched below it,
newest first, since Vidur writes into a timestamped sub-folder).

Prints a Markdown table of TTFT / TPOT / E2E p50 and p90 in ms and ours against Vidur in %.
How to produce both runs from the same requests and the same profiles: sim/VIDUR.md.

The two tables count TPOT differently, so Vidur's is put on our footing before comparing:
Vidur divides the decode time (first token -> completion) by all `n` output tokens, we divide it
by the `n - 1` tokens produced after the first; Vidur's value is multiplied by n / (n - 1).
Requests with a single output token have no TPOT on either side and are left out of it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

VIDUR_COLUMNS = ("prefill_e2e_time", "decode_time_execution_plus_preemption_normalized", "request_e2e_time",
                 "request_num_decode_tokens")
OUR_COLUMNS = ("status", "ttft_s", "tpot_s", "e2el_s", "output_len")
METRICS = ("ttft", "tpot", "e2e")
PERCENTILES = (50, 90)


@dataclass
class Latencies:
    """Per-request seconds on a common footing (TPOT over the tokens after the first)."""
    source: str
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray

    @property
    def count(self) -> int:
        return len(self.e2e)


@dataclass
class Row:
    metric: str
    percentile: int
    ours_ms: float
    vidur_ms: float

    @property
    def diff_pct(self) -> float:
        return 100.0 * (self.ours_ms - self.vidur_ms) / self.vidur_ms


def _require(df: pd.DataFrame, columns, path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns present: {list(df.columns)}")


def _numeric(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna() & (df[column].astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {row + 2}, column {column!r}: not a number: {df[column].iloc[row]!r}")
    return values.to_numpy(dtype=float)


def newest_output(path: str | Path, name: str, hint: str = "") -> Path:
    """`path` itself if it is a file, else the newest file called `name` in or below it (Vidur
    writes each run into a timestamped folder)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.rglob(name), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise FileNotFoundError(f"{path}: no {name} in it or below it{hint}")
    return found[0]


def find_vidur_metrics(path: str | Path) -> Path:
    return newest_output(path, "request_metrics.csv")


def read_vidur(path: str | Path) -> Latencies:
    path = find_vidur_metrics(path)
    df = pd.read_csv(path)
    _require(df, VIDUR_COLUMNS, path)
    n = _numeric(df, "request_num_decode_tokens", path)
    per_token = _numeric(df, "decode_time_execution_plus_preemption_normalized", path)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(n > 1, per_token * n / (n - 1), np.nan)
    return Latencies(str(path), _numeric(df, "prefill_e2e_time", path), tpot, _numeric(df, "request_e2e_time", path))


def read_ours(run_dir: str | Path) -> Latencies:
    run_dir = Path(run_dir)
    parquet, csv = run_dir / "requests.parquet", run_dir / "requests.csv"
    if parquet.exists():
        path, df = parquet, pd.read_parquet(parquet)
    elif csv.exists():
        path, df = csv, pd.read_csv(csv)
    else:
        raise FileNotFoundError(f"{run_dir}: no requests.parquet or requests.csv (the --out folder of folovllm sim)")
    _require(df, OUR_COLUMNS, path)
    df = df[df["status"] == "finished"]
    out = _numeric(df, "output_len", path)
    tpot = np.where(out > 1, _numeric(df, "tpot_s", path), np.nan)
    return Latencies(str(path), _numeric(df, "ttft_s", path), tpot, _numeric(df, "e2el_s", path))


def side_by_side(ours: Latencies, vidur: Latencies) -> list[Row]:
    if ours.count != vidur.count:
        raise ValueError(f"different request counts: {ours.count} finished in {ours.source}, "
                         f"{vidur.count} in {vidur.source}: not the same requests")
    rows = []
    for metric in METRICS:
        a, b = getattr(ours, metric), getattr(vidur, metric)
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        for p in PERCENTILES:
            rows.append(Row(metric.upper(), p, 1e3 * float(np.percentile(a, p)), 1e3 * float(np.percentile(b, p))))
    return rows


def render(rows: list[Row], label: str = "") -> str:
    head = f"| {label or 'metric'} | ours (ms) | Vidur (ms) | ours vs Vidur |\n|---|---:|---:|---:|\n"
    return head + "".join(f"| {r.metric} p{r.percentile} | {r.ours_ms:,.1f} | {r.vidur_ms:,.1f} | {r.diff_pct:+.1f} % |\n"
                          for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ours", help="folovllm sim --out folder")
    parser.add_argument("vidur", help="Vidur request_metrics.csv or a folder above it")
    parser.add_argument("--label", default="", help="first column's heading")
    args = parser.parse_args(argv)
    try:
        rows = side_by_side(read_ours(args.ours), read_vidur(args.vidur))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(rows, args.label), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
