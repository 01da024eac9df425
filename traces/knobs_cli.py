"""Command-line options for every scheduling knob, generated from `SchedulerConfig`'s fields.

`folovllm sim`, `replay` and `generate` all decorate themselves with `scheduler_options`, so
a knob added to `SchedulerConfig` appears in each with the same name, default, help and
choices, and no CLI can drift from the policy layer. (It lives in `traces` because that is the
lowest layer both the simulator's and the executor's CLIs may import that can use click.)

Naming: `--knob-name VALUE`; a boolean `enable_X` knob becomes `--X/--no-X` (so
`--no-prefix-caching`), any other boolean `--knob/--no-knob`.
"""

from __future__ import annotations

import click

from policy.config import KNOB_NAMES, SchedulerConfig


def flag_for(name: str) -> str:
    """The option's spelling for a knob (without the `--no-` twin)."""
    return "--" + name.removeprefix("enable_").replace("_", "-")


def _option(name: str, typ, default, help: str, choices):
    flag = flag_for(name)
    if typ is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=default, show_default=True, help=help)
    kind = click.Choice(choices) if choices else typ
    return click.option(flag, name, type=kind, default=default, show_default=default is not None, help=help)


def scheduler_options(func):
    """Add one option per SchedulerConfig field; the command receives them under the field names."""
    for name, typ, default, help, choices in reversed(SchedulerConfig.knob_fields()):
        func = _option(name, typ, default, help, choices)(func)
    return func


def pop_scheduler_knobs(kwargs: dict, *, quiet: bool = False) -> dict:
    """Remove the knob options from a command's keyword arguments and return them.

    The contiguous-KV baseline has no prefix cache; since prefix caching is on by default,
    asking for `--kv-layout contiguous` turns it off (saying so) instead of failing."""
    knobs = {name: kwargs.pop(name) for name in KNOB_NAMES if name in kwargs}
    if knobs.get("kv_layout") == "contiguous" and knobs.get("enable_prefix_caching"):
        knobs["enable_prefix_caching"] = False
        if not quiet:
            click.echo("note: --kv-layout contiguous has no prefix cache; prefix caching turned off", err=True)
    return knobs
