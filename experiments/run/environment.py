"""Where a result was measured: CPU/GPU, core count, load, library versions.

Written next to every results folder and shown in the report, because a measured step time
means nothing without the machine (and how busy it was) beside it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(with_torch: bool | None = None) -> dict:
    """JSON-ready description of this machine. Imports torch only when already loaded (or
    asked), so a simulation-only run stays light."""
    env = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {n: _version(n) for n in ("folovllm", "torch", "numpy", "pandas", "transformers", "matplotlib")},
    }
    if with_torch or (with_torch is None and "torch" in sys.modules):
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


def source_fingerprint(root: Path) -> str:
    """Hash of the Python source under `root` (file names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:8]


def code_fingerprint(*packages: str) -> str:
    """One hash over the source of the named top-level packages (e.g. "policy", "executor").

    Part of the keys of measured and simulated results and of calibration profiles: a change to an
    engine's code (a faster kernel, say) must not reuse results produced before it. The packages
    are found, not imported (hashing the executor's source must not load torch).
    """
    import importlib.util

    parts = []
    for name in packages:
        found = importlib.util.find_spec(name)
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"code_fingerprint: {name!r} is not an importable package")
        parts.append(f"{name}:{source_fingerprint(Path(list(found.submodule_search_locations)[0]))}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def machine_fingerprint() -> str:
    """Stable id of (CPU model, cores, torch threads, torch version, GPU): a calibrated
    profile is only reused on the machine it was measured on."""
    import torch

    parts = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
