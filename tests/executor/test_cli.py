"""The executor's CLI commands, end to end on a tiny random model."""

from __future__ import annotations

import json

from click.testing import CliRunner

from executor.cli import generate, model


def test_model_random_then_generate(tmp_path, one_thread):
    runner = CliRunner()
    out_dir = tmp_path / "tiny"
    res = runner.invoke(model, ["random", "--shape", "tiny-llama", "--out", str(out_dir), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt_token_ids": [5, 6, 7]}\n\n{"prompt_token_ids": [8, 9]}\n')
    res = runner.invoke(generate, ["--model", str(out_dir), "--prompts-file", str(prompts), "--max-tokens", "4",
                                   "--ignore-eos", "--json", "--kv-cache-memory", str(2**20), "--max-model-len", "64"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == 2 and all(len(r["token_ids"]) == 4 and r["finish_reason"] == "length" for r in rows)


def test_generate_reports_bad_input_by_line(tmp_path, tiny_model_dirs):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt_token_ids": [5, 6]}\n{"prompt_token_ids": "oops"}\n')
    res = CliRunner().invoke(generate, ["--model", str(tiny_model_dirs["tiny-qwen2"]), "--prompts-file", str(prompts)])
    assert res.exit_code != 0 and "bad.jsonl:2" in res.output


def test_generate_rejects_empty_prompt_and_unknown_model(tmp_path, tiny_model_dirs):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt_token_ids": []}\n')
    res = CliRunner().invoke(generate, ["--model", str(tiny_model_dirs["tiny-qwen2"]), "--prompts-file", str(prompts),
                                        "--kv-cache-memory", str(2**20), "--max-model-len", "64"])
    assert res.exit_code != 0 and "empty" in res.output
    res = CliRunner().invoke(generate, ["--model", str(tmp_path / "nope"), "--prompt", "hi"])
    assert res.exit_code != 0 and "neither a known name" in res.output


class _FakeTable:
    """Stands in for traces.TraceTable: yields policy Requests in arrival order."""

    def __init__(self, rows):
        self.rows = rows

    def iter_requests(self, block_size=16, vocab_size=None, eos_token_id=None, ignore_eos=True):
        from policy import Request

        for i, (arrival, prompt_len, output_len) in enumerate(self.rows):
            yield Request(f"t{i}", [(7 * i + j) % (vocab_size - 3) + 3 for j in range(prompt_len)], max_tokens=output_len,
                          arrival_time=arrival, eos_token_id=eos_token_id, ignore_eos=ignore_eos)


def test_replay_writes_tables_and_counts_rejections(tmp_path, tiny_model_dirs, monkeypatch, one_thread):
    import traces

    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("placeholder\n")
    rows = [(0.0, 6, 4), (0.02, 0, 3), (0.05, 5, 2), (0.06, 100, 2)]  # an empty and a too-long prompt
    monkeypatch.setattr(traces, "load", lambda path, format=None: _FakeTable(rows), raising=False)
    from executor.cli import replay

    out = tmp_path / "run"
    res = CliRunner().invoke(replay, ["--model", str(tiny_model_dirs["tiny-qwen3"]), "--trace", str(trace_file),
                                      "--out", str(out), "--kv-cache-memory", str(2**20), "--max-model-len", "64"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_requests"] == 4 and summary["num_finished"] == 2 and summary["num_rejected"] == 2
    assert summary["total_output_tokens"] == 6
    assert (out / "requests.csv").is_file() and (out / "steps.csv").is_file()
    assert "2 request(s) rejected" in res.output


def test_generate_refuses_max_model_len_above_the_models_positions(tiny_model_dirs):
    res = CliRunner().invoke(generate, ["--model", str(tiny_model_dirs["tiny-qwen2"]), "--prompt", "hi",
                                        "--max-model-len", "1000000", "--kv-cache-memory", str(2**20)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "max_model_len=1000000 exceeds the model's max_position_embeddings" in res.output


def test_binary_prompts_file_names_file_and_byte_offset(tmp_path, tiny_model_dirs):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"hello\n\xff\xfe binary")
    res = CliRunner().invoke(generate, ["--model", str(tiny_model_dirs["tiny-qwen2"]), "--prompts-file", str(prompts)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert f"{prompts}:2: not UTF-8 text: byte 0xff at byte offset 6" in res.output
