"""The Vidur side-by-side helpers: metric footing, batch-shape reconstruction, bad input."""

import json
import math

import pandas as pd
import pytest

from experiments.bench.vidur_batches import VidurBatch, batch_shapes, read_vidur_batches, scale_profile
from experiments.bench.vidur_side_by_side import read_ours, read_vidur, side_by_side
from policy.plan import StepShape


def write_vidur(path, rows):
    pd.DataFrame(rows, columns=["Request Id", "prefill_e2e_time", "decode_time_execution_plus_preemption_normalized",
                                "request_e2e_time", "request_num_decode_tokens"]).to_csv(path, index=False)


def write_ours(folder, rows):
    folder.mkdir()
    pd.DataFrame(rows, columns=["request_id", "status", "ttft_s", "tpot_s", "e2el_s", "output_len"]).to_csv(
        folder / "requests.csv", index=False)


def test_vidur_tpot_is_put_on_our_footing(tmp_path):
    # 4 output tokens, 0.3 s from first token to completion: Vidur divides by 4, we by 3.
    write_vidur(tmp_path / "request_metrics.csv", [[0, 0.1, 0.3 / 4, 0.4, 4], [1, 0.2, 0.0, 0.2, 1]])
    vidur = read_vidur(tmp_path)
    assert vidur.tpot[0] == pytest.approx(0.1)
    assert math.isnan(vidur.tpot[1])  # one output token: no TPOT


def test_same_runs_agree_and_differences_are_signed(tmp_path):
    write_vidur(tmp_path / "v.csv", [[0, 0.1, 0.3 / 4, 0.4, 4], [1, 0.2, 0.2 / 3, 0.5, 3]])
    write_ours(tmp_path / "ours", [[0, "finished", 0.11, 0.1, 0.4, 4], [1, "finished", 0.22, 0.1, 0.5, 3]])
    rows = {(r.metric, r.percentile): r for r in side_by_side(read_ours(tmp_path / "ours"), read_vidur(tmp_path / "v.csv"))}
    assert rows[("TPOT", 50)].diff_pct == pytest.approx(0.0)
    assert rows[("E2E", 90)].diff_pct == pytest.approx(0.0)
    assert rows[("TTFT", 50)].diff_pct == pytest.approx(10.0)


def test_different_request_counts_are_refused(tmp_path):
    write_vidur(tmp_path / "v.csv", [[0, 0.1, 0.1, 0.4, 4]])
    write_ours(tmp_path / "ours", [[0, "finished", 0.1, 0.1, 0.4, 4], [1, "finished", 0.1, 0.1, 0.4, 4]])
    with pytest.raises(ValueError, match="different request counts"):
        side_by_side(read_ours(tmp_path / "ours"), read_vidur(tmp_path / "v.csv"))


def test_bad_vidur_table_names_file_row_and_column(tmp_path):
    pd.DataFrame({"prefill_e2e_time": [0.1]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match=r"a\.csv: missing column.*request_e2e_time"):
        read_vidur(tmp_path / "a.csv")
    write_vidur(tmp_path / "b.csv", [[0, 0.1, 0.1, 0.4, 4], [1, "soon", 0.1, 0.4, 4]])
    with pytest.raises(ValueError, match=r"b\.csv: row 3, column 'prefill_e2e_time'"):
        read_vidur(tmp_path / "b.csv")


def test_batch_shapes_follow_each_request_through_its_prompt():
    # request 0: 5-token prompt in chunks of 3 and 2, then decodes; request 1: 4-token prompt at once.
    batches = [VidurBatch(0.01, [0], [3]), VidurBatch(0.01, [0, 1], [2, 4]), VidurBatch(0.01, [0, 1], [1, 1])]
    shapes = batch_shapes(batches, [5, 4])
    assert shapes[0] == StepShape(1, 3, 0, 3, 0, 6, 0)
    assert shapes[1] == StepShape(2, 6, 0, 5 + 4, 0, (2 * 3 + 3) + 10, 2)
    assert shapes[2] == StepShape(0, 0, 2, 0, 6 + 5, 0, 2)


def test_batch_past_the_prompt_is_an_error():
    with pytest.raises(ValueError, match="batch 0: request 0 computes 6 prompt tokens after 0 of 5"):
        batch_shapes([VidurBatch(0.01, [0], [6])], [5])


def test_read_vidur_batches(tmp_path):
    events = [{"ph": "X", "dur": 2500.0, "args": {"request_ids": [0, 1], "num_tokens": [3.0, 1.0]}}, {"ph": "M"}]
    (tmp_path / "chrome_trace.json").write_text(json.dumps({"traceEvents": events}))
    assert read_vidur_batches(tmp_path) == [VidurBatch(0.0025, [0, 1], [3, 1])]


def test_scale_profile_scales_timings_only(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pd.DataFrame({"num_tokens": [1, 2], "n_embd": [4096, 4096], "time_stats.mlp_up_proj.median": [1.0, 2.0]}).to_csv(
        src / "mlp.csv", index=False)
    scale_profile(src, tmp_path / "dst", 0.5)
    out = pd.read_csv(tmp_path / "dst" / "mlp.csv")
    assert list(out["time_stats.mlp_up_proj.median"]) == [0.5, 1.0]
    assert list(out["num_tokens"]) == [1, 2] and list(out["n_embd"]) == [4096, 4096]
