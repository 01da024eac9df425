"""A run's files, written the same way for both engines, and atomically as a whole.

A run is a folder `runs/<label>-<key12>/` holding requests.parquet, steps.parquet,
summary.json and run.json. It is built in a hidden temporary sibling and renamed into place
in one `os.replace`, so a folder that exists is complete: an interrupted run leaves either
nothing or a finished result, and a rerun trusts what it finds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from traces import metrics
from traces.timeline import TimelineRecorder

TMP_PREFIX = ".tmp-"


def summarize_recorder(recorder: TimelineRecorder, slo: dict, scheduler_stats: dict,
                       block_size: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    requests = metrics.requests_table(recorder.timelines)
    steps = metrics.steps_table(recorder.steps)
    itl = metrics.itl_gaps(recorder.timelines)
    summary = metrics.summarize(requests, steps, itl, block_size=block_size, **{f"slo_{k}": v for k, v in slo.items()})
    queried = scheduler_stats.get("prefix_queries_tokens", 0)
    summary["scheduler_prefix_hit_rate"] = scheduler_stats.get("prefix_hit_tokens", 0) / queried if queried else None
    summary["scheduler_num_preemptions"] = scheduler_stats.get("num_preemptions")
    return requests, steps, summary


def write_run(final_dir: Path, recorder: TimelineRecorder, *, slo: dict, scheduler_stats: dict, run_info: dict,
              extra_columns: pd.DataFrame | None = None, extra_summary: dict | None = None) -> Path:
    """Write a whole run folder atomically (tmp sibling + rename). `extra_columns` (one row
    per timeline, in order) are appended after the request table's own columns and
    `extra_summary` keys added to summary.json (e.g. an HTTP client's statuses and retries)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    block_size = (run_info.get("knobs") or {}).get("block_size")
    requests, steps, summary = summarize_recorder(recorder, slo, scheduler_stats, block_size=block_size)
    if extra_columns is not None:
        if len(extra_columns) != len(requests):
            raise ValueError(f"extra_columns has {len(extra_columns)} rows for {len(requests)} requests")
        clash = set(extra_columns.columns) & set(requests.columns)
        if clash:
            raise ValueError(f"extra_columns {sorted(clash)} would replace the request table's own")
        requests = pd.concat([requests, extra_columns.reset_index(drop=True)], axis=1)
    if extra_summary:
        summary.update(extra_summary)
    return _write_folder(final_dir, requests, steps, summary, run_info)


def write_cluster_run(final_dir: Path, cluster, *, slo: dict, run_info: dict) -> Path:
    """A run of several simulated replicas (`sim.cluster.ClusterResult`), as one run folder:
    the pooled request and step tables with a `replica` column, and a summary over every
    request plus the cluster view (`num_replicas`, `router`, `routed`, `per_replica`, load
    imbalance) that reports show per replica."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    for replica in cluster.replicas:
        replica.with_slo(**{f"slo_{k}": v for k, v in slo.items()})
    return _write_folder(final_dir, cluster.requests_df, cluster.steps_df, _jsonable(cluster.summary), run_info)


def _write_folder(final_dir: Path, requests: pd.DataFrame, steps: pd.DataFrame, summary: dict, run_info: dict) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final_dir.name}-", dir=final_dir.parent))
    os.chmod(tmp, 0o755)
    try:
        metrics.write_table(requests, tmp / "requests.parquet")
        metrics.write_table(steps, tmp / "steps.parquet")
        metrics.write_json(summary, tmp / "summary.json")
        metrics.write_json(run_info, tmp / "run.json")
        if final_dir.exists():  # finished by another process meanwhile: keep the first
            shutil.rmtree(tmp)
            return final_dir
        os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir


def is_complete(run_dir: Path) -> bool:
    return all((Path(run_dir) / f).is_file() for f in ("requests.parquet", "steps.parquet", "summary.json", "run.json"))


def remove_stale_tmp(runs_dir: Path) -> int:
    """Temporary folders left by a killed run (never a finished result)."""
    n = 0
    if Path(runs_dir).is_dir():
        for p in Path(runs_dir).iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def write_json_atomic(data, path: Path) -> Path:
    return metrics.write_json(_jsonable(data), path)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, Path):
        return str(x)
    return x


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
