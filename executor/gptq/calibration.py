"""Calibration and evaluation text that ships with the system, cut into token windows.

The machine has no network, so the text comes from /usr/share/common-licenses. To keep
calibration and evaluation apart, the default calibration set is every licence text *except*
the GPL-3 (and the `GPL` link that points to it), and GPL-3 is the default evaluation text.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LICENSES_DIR = Path("/usr/share/common-licenses")
DEFAULT_EVAL_TEXT = LICENSES_DIR / "GPL-3"


class CalibrationError(ValueError):
    """Calibration text that cannot give the requested windows; the message says how short it was."""


def default_calibration_files(exclude: Path = DEFAULT_EVAL_TEXT) -> list[Path]:
    """Licence texts other than the evaluation text, one path per distinct file (links resolved)."""
    if not LICENSES_DIR.is_dir():
        raise CalibrationError(f"{LICENSES_DIR}: missing; pass calibration text with --calib FILE")
    excluded = os.path.realpath(exclude)
    seen: dict[str, Path] = {}
    for p in sorted(LICENSES_DIR.iterdir()):
        real = os.path.realpath(p)
        if p.is_file() and real != excluded and real not in seen:
            seen[real] = Path(real)
    return list(seen.values())


def read_texts(files: list[str | os.PathLike]) -> str:
    """The files' text joined by blank lines; a missing or empty file is an error naming it."""
    parts = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise CalibrationError(f"{p}: calibration file not found")
        text = p.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise CalibrationError(f"{p}: calibration file is empty")
        parts.append(text)
    if not parts:
        raise CalibrationError("no calibration files given")
    return "\n\n".join(parts)


def calibration_windows(token_ids: list[int], seq_len: int, n_samples: int) -> torch.Tensor:
    """`n_samples` non-overlapping windows of `seq_len` tokens, spread evenly over the text.

    Windows never overlap, so every calibration token is a distinct observation; text too short
    for that is an error (rather than silently repeating text or using fewer windows).
    """
    if seq_len < 2 or n_samples < 1:
        raise CalibrationError(f"need seq_len >= 2 and n_samples >= 1, got seq_len={seq_len}, n_samples={n_samples}")
    available = len(token_ids) // seq_len
    if available < n_samples:
        raise CalibrationError(
            f"calibration text too short: {len(token_ids)} tokens give {available} windows of {seq_len} tokens, "
            f"but {n_samples} were requested ({n_samples * seq_len} tokens); add text (--calib) or lower "
            f"--nsamples / --seq-len")
    picks = torch.linspace(0, available - 1, n_samples).round().long().tolist()
    ids = torch.tensor(token_ids[: available * seq_len], dtype=torch.long).view(available, seq_len)
    return ids[picks]
