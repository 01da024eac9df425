"""Reading and writing GPTQ checkpoints in the HF / AutoGPTQ / GPTQModel layout.

A quantized model directory is an ordinary HF directory whose `config.json` carries
`quantization_config = {"quant_method": "gptq", "bits", "group_size", "desc_act", "sym",
"checkpoint_format", ...}` (older AutoGPTQ dirs keep the same keys in `quantize_config.json`;
`checkpoint_format` absent means "gptq", the v1 zeros-minus-one convention), and whose
safetensors hold, per quantized linear `<name>`: `<name>.qweight`, `<name>.qzeros`,
`<name>.scales`, `<name>.g_idx` and optionally `<name>.bias`. Everything else (embeddings,
norms, the LM head) stays a 16-bit tensor.

Writes are atomic: the whole directory is built under a temporary name next to the target
and renamed into place only when complete, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from executor.checkpoint_checks import CheckpointError, load_file_checked

from .linear import CHECKPOINT_FORMATS, num_groups
from .packing import SUPPORTED_BITS, pack_factor


class GPTQCheckpointError(CheckpointError):
    """A GPTQ checkpoint (or a request to write one) that cannot be honoured; the message names what and where."""


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"
    damp_percent: float = 0.01
    true_sequential: bool = True
    static_groups: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    def validate(self, source: str = "quantization_config") -> "GPTQConfig":
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in SUPPORTED_BITS:
            raise GPTQCheckpointError(f"{source}: bits={self.bits!r} is not supported "
                                      f"(supported: {', '.join(map(str, SUPPORTED_BITS))})")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or (
                self.group_size != -1 and self.group_size <= 0):
            raise GPTQCheckpointError(f"{source}: group_size={self.group_size!r} must be a positive integer or -1")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise GPTQCheckpointError(f"{source}: checkpoint_format={self.checkpoint_format!r} is not supported "
                                      f"(supported: {', '.join(CHECKPOINT_FORMATS)})")
        for name in ("desc_act", "sym"):
            if not isinstance(getattr(self, name), bool):
                raise GPTQCheckpointError(f"{source}: {name}={getattr(self, name)!r} must be true or false")
        if not 0.0 <= float(self.damp_percent) < 1.0:
            raise GPTQCheckpointError(f"{source}: damp_percent={self.damp_percent!r} must lie in [0, 1)")
        return self

    def to_quantization_config(self) -> dict:
        d = asdict(self)
        meta = d.pop("meta") or {}
        return {"quant_method": "gptq", **d, "lm_head": False, "meta": {"quantizer": ["folovllm"], **meta}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "quantization_config") -> "GPTQConfig":
        if not isinstance(d, dict):
            raise GPTQCheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
        method = str(d.get("quant_method", "gptq")).lower()
        if method != "gptq":
            raise GPTQCheckpointError(f"{source}: quant_method={d.get('quant_method')!r} is not GPTQ")
        if d.get("lm_head", False):
            raise GPTQCheckpointError(f"{source}: lm_head=true (a quantized LM head) is not supported; "
                                      "the LM head must stay 16-bit")
        for key in ("bits", "group_size"):
            if key not in d:
                raise GPTQCheckpointError(f"{source}: missing field {key!r}")
        cfg = cls(bits=d["bits"], group_size=d["group_size"], desc_act=d.get("desc_act", False),
                  sym=d.get("sym", True), checkpoint_format=d.get("checkpoint_format") or "gptq",
                  damp_percent=d.get("damp_percent", 0.01), true_sequential=d.get("true_sequential", True),
                  static_groups=d.get("static_groups", False), meta=d.get("meta") or {})
        return cfg.validate(source)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GPTQCheckpointError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise GPTQCheckpointError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def read_gptq_config(model_dir: str | os.PathLike) -> GPTQConfig | None:
    """The GPTQ settings of a model directory, or None when it is not GPTQ-quantized."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise GPTQCheckpointError(f"{cfg_path}: missing (not a model directory)")
    qc = _read_json(cfg_path).get("quantization_config")
    legacy = model_dir / "quantize_config.json"
    legacy_d = _read_json(legacy) if legacy.is_file() else None
    if qc is None and legacy_d is None:
        return None
    if qc is None:
        return GPTQConfig.from_dict(legacy_d, str(legacy))
    if legacy_d and "checkpoint_format" not in qc and "checkpoint_format" in legacy_d:
        qc = {**qc, "checkpoint_format": legacy_d["checkpoint_format"]}
    return GPTQConfig.from_dict(qc, f"{cfg_path}: quantization_config")


def expected_shapes(in_features: int, out_features: int, cfg: GPTQConfig) -> dict[str, tuple[int, ...]]:
    f = pack_factor(cfg.bits)
    G = num_groups(in_features, cfg.group_size)
    return {"qweight": (in_features // f, out_features), "qzeros": (G, out_features // f),
            "scales": (G, out_features), "g_idx": (in_features,)}


def check_layer_tensors(name: str, tensors: dict[str, torch.Tensor], in_features: int, out_features: int,
                        cfg: GPTQConfig, source: str = "checkpoint") -> None:
    """Raise GPTQCheckpointError unless `<name>.{qweight,qzeros,scales,g_idx}` have the layout's shapes."""
    for suffix, shape in expected_shapes(in_features, out_features, cfg).items():
        key = f"{name}.{suffix}"
        if key not in tensors:
            raise GPTQCheckpointError(f"{source}: tensor {key!r} is missing")
        got = tuple(tensors[key].shape)
        if got != shape:
            raise GPTQCheckpointError(f"{source}: tensor {key!r} has shape {got}, expected {shape} for a "
                                      f"{in_features}->{out_features} layer at bits={cfg.bits}, "
                                      f"group_size={cfg.group_size}")
    for suffix in ("qweight", "qzeros", "g_idx"):
        if tensors[f"{name}.{suffix}"].dtype != torch.int32:
            raise GPTQCheckpointError(f"{source}: tensor {name}.{suffix!s} has dtype "
                                      f"{tensors[f'{name}.{suffix}'].dtype}, expected torch.int32")


def safetensors_files(model_dir: str | os.PathLike) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GPTQCheckpointError(f"{model_dir}: no *.safetensors files")
    for f in files:
        if not f.is_file():
            raise GPTQCheckpointError(f"{f}: listed in the index but missing")
    return files


def read_tensors(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors model directory (single file or sharded with an index), each
    checked once for its documented dtype and finite values (`executor.checkpoint_checks`)."""
    out: dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        out.update(load_file_checked(f))
    return out


def quantized_layer_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))


SKIPPED_FILE_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth", ".gguf")


def write_model_dir(out_dir: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                    copy_from: str | os.PathLike | None = None, extra_json: dict[str, dict] | None = None,
                    overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files copied from `copy_from`) atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise GPTQCheckpointError(f"{out_dir}: already exists (choose another --out or pass --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        if copy_from is not None:
            for f in sorted(Path(copy_from).iterdir()):
                if f.is_file() and f.name != "config.json" and f.name != "quantize_config.json" \
                        and not f.name.endswith(SKIPPED_FILE_SUFFIXES):
                    shutil.copy2(f, tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, d in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, trash / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
