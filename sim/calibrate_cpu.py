"""`python -m sim.calibrate_cpu OUT.json`: measure this machine's ceilings once (numpy copy
bandwidth and fp32 GEMM rate) and save them as a hardware file for `--hardware OUT.json`.
Saving keeps later simulations deterministic: the measurement happens once, not per run."""

from __future__ import annotations

import sys
from pathlib import Path

from sim.hardware import calibrate_cpu
from traces.files import atomic_write_json


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m sim.calibrate_cpu OUT.json", file=sys.stderr)
        return 2
    spec = calibrate_cpu()
    out = Path(argv[0])
    atomic_write_json(out, spec.to_dict())
    print(f"wrote {out}: copy {spec.mem_bw / 1e9:.1f} GB/s, fp32 GEMM {spec.flops_32 / 1e9:.1f} GFLOP/s, "
          f"memory {spec.memory_bytes / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
