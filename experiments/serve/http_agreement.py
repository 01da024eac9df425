"""How far a client's view of a run is from the server's own: per request (matched by id),
client TTFT - server TTFT and client E2EL - server E2EL. The client's figures include the
HTTP round trip (parsing, tokenising, the event loop, the network), so they are larger by a
few milliseconds on loopback; a larger gap means one of the two measures something else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def read_requests(run_dir: str | Path) -> pd.DataFrame:
    run_dir = Path(run_dir)
    for name in ("requests.parquet", "requests.csv"):
        if (run_dir / name).is_file():
            return pd.read_parquet(run_dir / name) if name.endswith(".parquet") else pd.read_csv(run_dir / name)
    raise FileNotFoundError(f"{run_dir}: no requests.parquet or requests.csv")


def agreement(client: pd.DataFrame, server: pd.DataFrame, *, tolerance_s: float = 0.020) -> dict:
    """Statistics of the per-request differences over requests finished on both sides."""
    cols = ["request_id", "ttft_s", "e2el_s", "status"]
    client = client[cols].astype({"request_id": str})  # a CSV reader may have made ids numbers
    server = server[cols].astype({"request_id": str})
    both = client.merge(server, on="request_id", suffixes=("_client", "_server"))
    both = both[(both["status_client"] == "finished") & (both["status_server"] == "finished")]
    out: dict = {"num_client": int(len(client)), "num_server": int(len(server)), "num_matched": int(len(both)),
                 "tolerance_s": tolerance_s}
    for metric in ("ttft", "e2el"):
        diff = (both[f"{metric}_s_client"] - both[f"{metric}_s_server"]).to_numpy(dtype=float)
        diff = diff[~np.isnan(diff)]
        if not len(diff):
            out[metric] = None
            continue
        out[metric] = {
            "within_tolerance": float(np.mean(np.abs(diff) <= tolerance_s)),
            "median_diff_s": float(np.median(diff)),
            "p95_abs_diff_s": float(np.percentile(np.abs(diff), 95)),
            "max_abs_diff_s": float(np.max(np.abs(diff))),
            "min_diff_s": float(np.min(diff)),
        }
    return out
