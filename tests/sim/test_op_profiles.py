"""Operator profiles (ours and Vidur's): reading, and a clear error for every kind of bad input."""

from __future__ import annotations

import csv

import pytest

from sim.cost.layer_ops import LAYER_OPS
from sim.cost.op_profile import ProfileError, write_own
from sim.cost.profiles import load_op_profile, read_op_profiles
from sim.cost.vidur_profile import VIDUR_OPS
from sim.models import get_model_shape

LLAMA2 = get_model_shape("llama-2-7b")


def own_profile(path, tokens=(1, 8, 64, 512), tp=1, model=LLAMA2):
    meas = [(t, {op: 1e-5 * (1 + t / 64) * (i + 1) for i, op in enumerate(("embed",) + LAYER_OPS)}) for t in tokens]
    return write_own(path / "ops.csv", device="h100", dtype="bf16", model=model, tp=tp, measurements=meas)


def vidur_profile(path, rows):
    """rows: list of dicts overriding a valid Llama-2-7B row."""
    header = [f"time_stats.{op}.median" for op in VIDUR_OPS] + [
        "n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp", "num_tokens",
        "num_tensor_parallel_workers"]
    base = {**{f"time_stats.{op}.median": "0.01" for op in VIDUR_OPS}, "n_head": "32", "n_kv_head": "32",
            "n_embd": "4096", "n_expanded_embd": "11008", "vocab_size": "32768", "use_gated_mlp": "True",
            "num_tensor_parallel_workers": "1"}
    folder = path / "h100" / "meta-llama" / "Llama-2-7b-hf"
    folder.mkdir(parents=True)
    with (folder / "mlp.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        for r in rows:
            w.writerow({**base, **r})
    return folder / "mlp.csv"


def test_own_format_round_trip(tmp_path):
    path = own_profile(tmp_path)
    p = load_op_profile(tmp_path)
    assert p.path == path and p.device == "h100" and p.tp == 1
    assert list(p.tokens) == [1, 8, 64, 512]
    assert p.layer_ops == LAYER_OPS
    # the layer is the sum of its operators (embed is per step, not per layer)
    want = sum(1e-5 * (1 + 512 / 64) * (i + 2) for i in range(len(LAYER_OPS)))
    assert p.layer_seconds()[-1] == pytest.approx(want, rel=1e-4)
    p.check_model(LLAMA2)


def test_vidur_format_reads_shape_tp_and_averages_repeats(tmp_path):
    path = vidur_profile(tmp_path, [
        {"num_tokens": "4", "time_stats.attn_pre_proj.median": "0.02"},
        {"num_tokens": "4", "time_stats.attn_pre_proj.median": "0.04"},
        {"num_tokens": "1"},
        {"num_tokens": "1", "num_tensor_parallel_workers": "2"},
    ])
    profiles = read_op_profiles(path)
    assert [p.tp for p in profiles] == [1, 2]
    p = profiles[0]
    assert p.device == "h100" and p.shape.head_dim == 128 and p.shape.gated_mlp
    assert list(p.tokens) == [1, 4]
    assert p.seconds["qkv_proj"][1] == pytest.approx(0.03e-3)
    p.check_model(LLAMA2)


def test_missing_column_names_file_and_column(tmp_path):
    path = own_profile(tmp_path)
    text = path.read_text().replace("num_tokens", "n_tokens")
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"ops\.csv row 1: column\(s\) \['num_tokens'\] missing"):
        load_op_profile(tmp_path)


def test_vidur_missing_shape_column(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1"}])
    rows = list(csv.reader(path.open()))
    i = rows[0].index("n_kv_head")
    path.write_text("\n".join(",".join(r[:i] + r[i + 1:]) for r in rows) + "\n")
    with pytest.raises(ProfileError, match=r"mlp\.csv row 1: column\(s\) \['n_kv_head'\] missing"):
        read_op_profiles(path)


def test_non_numeric_cell_names_row_and_column(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1"}, {"num_tokens": "2", "time_stats.mlp_act.median": "fast"}])
    with pytest.raises(ProfileError, match=r"mlp\.csv row 3 column 'time_stats\.mlp_act\.median': 'fast' is not a number"):
        read_op_profiles(path)


def test_non_numeric_own_cell(tmp_path):
    path = own_profile(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",8,", ",eight,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError, match=r"ops\.csv row 3 column 'num_tokens': 'eight'"):
        load_op_profile(tmp_path)


def test_shape_mismatch_names_row_and_column(tmp_path):
    own_profile(tmp_path)
    p = load_op_profile(tmp_path)
    with pytest.raises(ProfileError, match=r"ops\.csv row 2 column 'num_kv_heads': .*num_kv_heads=32, but model 'llama-3-8b' has num_kv_heads=8"):
        p.check_model(get_model_shape("llama-3-8b"))


def test_vidur_shape_mismatch_names_vidur_column(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1"}])
    p = load_op_profile(path)
    with pytest.raises(ProfileError, match=r"column 'n_expanded_embd'"):
        p.check_model(get_model_shape("llama-3-8b").__class__(**{**LLAMA2.to_dict(), "intermediate_size": 14336}))


def test_shape_changing_between_rows_is_an_error(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1"}, {"num_tokens": "2", "n_embd": "5120"}])
    with pytest.raises(ProfileError, match=r"row 3 column 'n_embd': 5120 differs from 4096 in row 2"):
        read_op_profiles(path)


def test_tp_mismatch(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1"}, {"num_tokens": "1", "num_tensor_parallel_workers": "2"}])
    with pytest.raises(ProfileError, match=r"column 'num_tensor_parallel_workers': no rows for tensor-parallel degree 4 \(the file has 1, 2\)"):
        load_op_profile(path, tp=4)


def test_non_positive_time_and_empty_files(tmp_path):
    path = vidur_profile(tmp_path, [{"num_tokens": "1", "time_stats.add.median": "0"}])
    with pytest.raises(ProfileError, match=r"row 2 column 'time_stats\.add\.median': a time must be > 0"):
        read_op_profiles(path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "ops.csv").write_text("")
    with pytest.raises(ProfileError, match="empty file"):
        load_op_profile(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no ops.csv"):
        load_op_profile(tmp_path)


def test_vidur_attention_csv_is_read_beside_mlp(tmp_path):
    """Vidur's attention.csv (the columns of its profiler / the stand-in script) is found next to mlp.csv."""
    from sim.cost.profiles import load_attention_profile

    mlp = vidur_profile(tmp_path, [{"num_tokens": "1"}, {"num_tokens": "8"}])
    header = ["n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers", "max_model_len",
              "batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill",
              "time_stats.attn_decode.median", "time_stats.attn_prefill.median"]
    rows = [[4096, 32, 32, 16, 1, 4096, b, 0, kv, False, 0.01 * b * kv / 512, ""] for b in (1, 8) for kv in (512, 1024)]
    rows += [[4096, 32, 32, 16, 1, 4096, 1, c, kv, True, "", 0.001 * c + 0.0001 * kv] for c in (64, 512) for kv in (0, 1024)]
    with (mlp.parent / "attention.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    attn = load_attention_profile(mlp.parent)
    attn.check_model(LLAMA2, 1)
    assert attn.seconds(0, 0, 0, 8, 8 * 1024) == pytest.approx(0.16e-3)
    assert attn.seconds(2, 2 * 512, 2 * 1024, 0, 0) == pytest.approx(2 * (0.512 + 0.1024) * 1e-3)
    with pytest.raises(ProfileError, match="no rows for tensor-parallel degree 2"):
        load_attention_profile(mlp.parent, tp=2)
    lines = (mlp.parent / "attention.csv").read_text().splitlines()
    lines[3] = lines[3].replace("False", "maybe")
    (mlp.parent / "attention.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError, match=r"attention\.csv row 4 column 'is_prefill': 'maybe' is not a boolean"):
        load_attention_profile(mlp.parent)
