"""How well do cost models price executor steps they were not fitted on?

`python -m experiments.analysis.cost_model_heldout --profile PROFILE.json RUN_DIR [RUN_DIR ...]`

PROFILE is a calibration profile (`python -m experiments.cli calibrate ... --out PROFILE.json`);
each RUN_DIR is an executor run (a folder with steps.parquet, e.g. `results/<spec>/runs/executor-*`)
of a workload the calibration never saw. Three models are fitted from the profile's samples and
priced on the runs' steps with `experiments.analysis.step_accounting`, per plan-shape class:

- `linear, short grid`: the previous model — linear in rows — fitted on the samples the
  previous calibration grid also measured (contexts up to 300 tokens, decode batches 1/4/8/16,
  no prefill after a prefix hit, no conversation replay);
- `linear, full grid`: the same form on every sample (what the grid alone buys);
- the profile's own model (form chosen by cross-validation on the calibration's replays).

It also prints the calibration's cross-validation table (every form's held-out MAPE).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.analysis import step_accounting as sa

OLD_DECODE_BATCHES = (1, 4, 8, 16)
OLD_MIXED_BATCHES = (1, 8, 16)
OLD_MAX_CONTEXT = 300


def in_short_grid(sample: dict) -> bool:
    """Whether the previous calibration grid measured a sample of this shape."""
    if sample.get("group") not in (None, "replayburst0"):
        return False
    n_pre, pre_tok, n_dec = sample["num_prefill_requests"], sample["num_prefill_tokens"], sample["num_decode_requests"]
    pre_ctx = sample["sum_prefill_context_len"]
    dec_ctx = sample["sum_context_len"] - pre_ctx
    if sample.get("group") is not None:
        return True
    if n_dec:
        batches = OLD_MIXED_BATCHES if n_pre else OLD_DECODE_BATCHES
        return n_dec in batches and dec_ctx / n_dec <= OLD_MAX_CONTEXT
    cached = pre_ctx - pre_tok
    return n_pre == 1 and cached in (0, pre_tok, 2 * pre_tok)


def candidate_models(profile_path: str | Path) -> list[tuple[str, object]]:
    from sim.cost.profiled import LINEAR, ProfiledCostModel, fit_profile

    profile = ProfiledCostModel.load(profile_path)
    short = [s for s in profile.samples if in_short_grid(s)]
    return [
        (f"linear, short grid ({len(short)} samples)", fit_profile(short, forms=(LINEAR,))),
        (f"linear, full grid ({len(profile.samples)} samples)", fit_profile(profile.samples, forms=(LINEAR,))),
        (f"{profile.form.name} (profile's choice)", profile),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Held-out step-level error of cost models on executor runs.")
    ap.add_argument("--profile", required=True)
    ap.add_argument("runs", nargs="+", help="executor run folders (steps.parquet) or steps.parquet files")
    args = ap.parse_args(argv)
    from sim.cost.profiled import ProfiledCostModel, format_fit_report

    print(format_fit_report(ProfiledCostModel.load(args.profile)))
    paths = [sa._steps_path(r) for r in args.runs]
    for name, model in candidate_models(args.profile):
        fit = model.fit_report
        held = "-" if fit.get("holdout_mape") is None else f"{100 * fit['holdout_mape']:.1f}%"
        print(f"\n== {name}: calibration held-out MAPE {held} ({fit.get('cv_scheme', 'not recorded')}); "
              f"on the {len(paths)} held-out run(s):")
        print(sa.format_accounting(sa.account_runs(paths, model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
