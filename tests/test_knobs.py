"""`SchedulerConfig` is the one place a scheduling knob is defined: the CLIs that schedule,
the experiment spec schema and `LLMEngine` all take exactly its fields, with its defaults."""

from __future__ import annotations

import dataclasses

import pytest

from policy.config import KNOB_NAMES, SchedulerConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(SchedulerConfig)}


def _knob_params(command) -> dict:
    return {p.name: p.default for p in command.params if p.name in KNOB_NAMES}


@pytest.mark.parametrize("target", ["sim.cli:sim", "executor.cli:generate", "executor.cli:replay"])
def test_every_scheduling_cli_takes_every_knob_with_the_config_default(target):
    import importlib

    module, attr = target.split(":")
    command = getattr(importlib.import_module(module), attr)
    assert _knob_params(command) == DEFAULTS
    helps = {p.name: p.help for p in command.params if p.name in KNOB_NAMES}
    assert helps == {name: help for name, _, _, help, _ in SchedulerConfig.knob_fields()}


def test_sim_help_lists_every_knob():
    from click.testing import CliRunner

    from sim.cli import sim
    from traces.knobs_cli import flag_for

    out = CliRunner().invoke(sim, ["--help"]).output
    missing = [name for name in KNOB_NAMES if flag_for(name) not in out]
    assert missing == []


def test_the_spec_schema_takes_every_knob_with_the_config_default():
    from experiments.run.spec import DEFAULT_KNOBS, SCHEDULER_KNOBS

    assert set(SCHEDULER_KNOBS) == set(KNOB_NAMES)
    assert {k: DEFAULT_KNOBS[k] for k in KNOB_NAMES if k != "num_blocks"} == \
        {k: v for k, v in DEFAULTS.items() if k != "num_blocks"}


def test_the_spec_refuses_a_knob_the_config_does_not_have(tmp_path):
    from experiments.run.spec import SpecError, load_spec

    path = tmp_path / "s.yaml"
    path.write_text("name: x\ntrace: {preset: poisson, params: {num_requests: 4}}\nmodel: llama-3-8b\n"
                    "hardware: h100-sxm\nengines: [sim]\nbase: {max_num_seq: 4}\n")
    with pytest.raises(SpecError, match="max_num_seq"):
        load_spec(path)


def test_the_engine_takes_every_knob_with_the_config_default(tmp_path):
    pytest.importorskip("torch")
    from executor.attention.registry import BACKEND_NAMES
    from executor.engine import LLMEngine, split_knobs
    from executor.models_registry import write_random_model
    from experiments.run.spec import ATTENTION_BACKENDS

    sched, exe = split_knobs(dict(DEFAULTS))
    assert sched == DEFAULTS and exe == {}
    with pytest.raises(TypeError, match="max_num_seq"):
        split_knobs({"max_num_seq": 4})
    engine = LLMEngine(write_random_model("tiny-qwen2", tmp_path / "m"), device="cpu", kv_cache_memory=2**22,
                       load_tokenizer=False)
    resolved = engine.scheduler_config.to_dict()
    assert {k: v for k, v in resolved.items() if DEFAULTS[k] is not None} == \
        {k: v for k, v in DEFAULTS.items() if v is not None}
    assert resolved["max_model_len"] == 4096 and resolved["num_blocks"] >= 4096 // 16
    assert tuple(ATTENTION_BACKENDS) == tuple(BACKEND_NAMES)
