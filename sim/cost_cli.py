"""`folovllm cost ...`: check a cost model against measured operator profiles."""

from __future__ import annotations

import click


@click.group()
def cost() -> None:
    """Cost models against measurements."""


@cost.command()
@click.argument("profile", type=click.Path(exists=True))
@click.option("--hardware", required=True, help="Hardware preset the profile was measured on (e.g. h100-sxm, a100-80g).")
@click.option("--cost-model", "cost_model", default="roofline", show_default=True,
              help="roofline (fitted), roofline-ideal, roofline-fitted, profile (this PROFILE) or profile:DIR.")
@click.option("--tp", default=1, show_default=True, type=click.IntRange(min=1), help="Tensor-parallel degree of the rows compared.")
@click.option("--leave-one-out", is_flag=True,
              help="Fitted roofline: fit on the other models of this GPU. Profile model: predict each token count without it.")
@click.option("--fit-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Where the other profiles are for --leave-one-out (default: the profile's <sku> folder in Vidur's layout).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Print every N-th token count.")
def validate(profile, hardware, cost_model, tp, leave_one_out, fit_dir, every):
    """Compare a cost model with PROFILE (an ops.csv / Vidur mlp.csv, or the folder holding it), one
    layer at every token count; the model shape is read from the profile's own columns."""
    from sim.cost.op_profile import ProfileError
    from sim.cost.validate import validate as run

    try:
        result = run(profile, hardware, cost_model, tp, leave_one_out, fit_dir)
    except (ProfileError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    p = result.profile
    click.echo(f"{p.path}: {p.label}, TP {p.tp}, ops {'+'.join(p.layer_ops)}")
    click.echo(f"cost model {cost_model} on {result.hardware}" + (f" ({result.note})" if result.note else ""))
    click.echo(result.table(every))
    click.echo(result.summary_line())
