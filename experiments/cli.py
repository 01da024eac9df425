"""The `folovllm` command. Subcommands live next to the layer they drive and load lazily,
so `folovllm --help` and the light commands never pay for importing torch."""

from __future__ import annotations

import importlib

import click

# name -> ("module:attribute", one-line help shown by `folovllm --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "trace": ("traces.cli:trace", "Read, convert, generate and describe request traces."),
    "sim": ("sim.cli:sim", "Replay a trace through the discrete-event simulator."),
    "capacity": ("experiments.run.capacity_cli:capacity", "Highest request rate each configuration takes within an SLO."),
    "model": ("executor.cli:model", "Prepare the embedded SmolLM2 model or write random models of real shapes."),
    "generate": ("executor.cli:generate", "Generate text offline with the paged-KV engine."),
    "replay": ("executor.cli:replay", "Replay a trace in real time through the real engine."),
    "serve": ("executor.serve.cli:serve", "Serve a model over HTTP with the OpenAI API (needs the 'serve' extra)."),
    "bench": ("experiments.serve.commands:bench", "Measure an OpenAI-compatible endpoint by replaying a trace."),
    "quantize": ("executor.gptq.cli:quantize", "Quantize a model to GPTQ 4-bit."),
    "eval": ("executor.gptq.cli:eval_group", "Quality checks: perplexity, KL divergence."),
    "run": ("experiments.run.commands:run", "Run an experiment spec in the simulator and/or the executor."),
    "calibrate": ("experiments.run.commands:calibrate", "Profile the executor and fit the simulator's cost model."),
    "report": ("experiments.run.commands:report", "Write the HTML + Markdown report of a results folder."),
    "demo": ("experiments.run.commands:demo", "The main job: calibrate, simulate, execute and report a small sweep."),
    "fidelity": ("experiments.run.fidelity:fidelity", "Simulator vs executor at four loads on synthetic and real traces."),
    "cost": ("sim.cost_cli:cost", "Check a cost model against measured operator profiles (cost validate)."),
    "profile": ("experiments.run.profile_ops:profile", "Time the executor's layer operators over a token grid (ops.csv)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        target, short_help = SUBCOMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _unavailable(name, short_help, f"{module_name} is not part of this build yet")
            raise
        if not hasattr(module, attr):
            return _unavailable(name, short_help, f"{target} is not part of this build yet")
        command = getattr(module, attr)
        command.short_help = command.short_help or short_help
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, without importing every layer.
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, short_help: str, why: str) -> click.Command:
    @click.command(name=name, short_help=short_help, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"`folovllm {name}`: {why}")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="folovllm")
def main() -> None:
    """FoloVLLM: LLM-serving policies, simulated and measured.

    One scheduler / paged-KV / prefix-cache policy layer drives both a discrete-event
    simulator and a real paged-attention engine; experiment reports compare the two.
    """


if __name__ == "__main__":
    main()
