"""Any profile folder or file, whichever format it is in (ours or Vidur's, told apart by the
header): the one entry point the cost models, `cost validate` and the fit read profiles through.
The format modules know nothing of each other; this one knows them all."""

from __future__ import annotations

from pathlib import Path

from sim.cost.attention_profile import OWN_FILE, AttentionProfile, read_own_attention
from sim.cost.op_profile import OpProfile, profile_file, read_own, select_tp
from sim.cost.vidur_profile import read_vidur_attention, read_vidur_mlp


def read_op_profiles(path: str | Path) -> list[OpProfile]:
    """Every TP degree's profile in a file (ours or Vidur's, told apart by the header)."""
    file = profile_file(path)
    with file.open(newline="") as fh:
        first = fh.readline()
    if "time_stats." in first:
        return read_vidur_mlp(file)
    return read_own(file)


def load_op_profile(path: str | Path, tp: int = 1) -> OpProfile:
    profiles = read_op_profiles(path)
    file = profiles[0].path
    tp_column = "num_tensor_parallel_workers" if profiles[0].columns.get("hidden_size") == "n_embd" else "tp"
    return select_tp(profiles, tp, file, tp_column)


def load_attention_profile(folder: str | Path, tp: int = 1) -> AttentionProfile | None:
    """The attention profile in a profile folder (ours or Vidur's), or None when there is none."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / OWN_FILE
    if not path.is_file():
        return None
    with path.open() as fh:
        first = fh.readline()
    if "is_prefill" in first:
        return read_vidur_attention(path, tp=tp)
    return read_own_attention(path, tp=tp)
