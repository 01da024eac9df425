"""The OpenAI-compatible server: request checking (no HTTP), then the official `openai` client
against a live server on 127.0.0.1 (streaming and not), errors, /metrics, disconnects
(request aborted, KV freed) and back-pressure (429 when the waiting queue is full)."""

from __future__ import annotations

import time

import pytest

from executor.serve.protocol import ApiError, IncrementalText, ModelInfo, parse
from tests.serve_helpers import require_serve_extra, running_server, write_tiny_model_with_tokenizer

MODEL = ModelInfo(name="tiny", max_model_len=64, vocab_size=512, tokenizer=None)


def _wait_until(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


# -- request checking, no server ---------------------------------------------------------
def test_parse_completion_with_token_ids_and_vllm_extensions():
    gen = parse({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 9, "temperature": 0, "ignore_eos": True,
                 "min_tokens": 2, "top_k": 5, "stop_token_ids": [3], "stream": True,
                 "stream_options": {"include_usage": True}}, MODEL, "completion")
    assert gen.prompt_token_ids == [5, 6, 7]
    assert (gen.params.max_tokens, gen.params.min_tokens, gen.params.top_k) == (9, 2, 5)
    assert gen.params.ignore_eos and gen.params.greedy and gen.params.stop_token_ids == (3,)
    assert gen.stream and gen.include_usage


@pytest.mark.parametrize("body, status, param", [
    ({"model": "other", "prompt": [1]}, 404, "model"),
    ({"prompt": [1]}, 400, "model"),
    ({"model": "tiny", "prompt": [1], "temperature": -0.5}, 400, "temperature"),
    ({"model": "tiny", "prompt": [1], "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": [1], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": [1], "max_tokens": "8"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": [1], "n": 2}, 400, "n"),
    ({"model": "tiny", "prompt": [1], "stop": ["\n"]}, 400, "stop"),
    ({"model": "tiny", "prompt": [1], "logprobs": 3}, 400, "logprobs"),
    ({"model": "tiny", "prompt": [1, 999]}, 400, "prompt"),
    ({"model": "tiny", "prompt": [[1], [2]]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "text needs a tokenizer"}, 400, "prompt"),
    ({"model": "tiny", "prompt": list(range(64))}, 400, "prompt"),  # no room to generate
    ({"model": "tiny", "prompt": list(range(60)), "max_tokens": 8}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": [1], "min_tokens": 20, "max_tokens": 4}, 400, "min_tokens"),
])
def test_bad_requests_are_4xx_naming_the_field(body, status, param):
    with pytest.raises(ApiError) as info:
        parse(body, MODEL, "completion")
    assert info.value.status == status
    assert info.value.param == param
    assert info.value.body()["error"]["message"]


def test_chat_needs_a_chat_template():
    with pytest.raises(ApiError, match="chat template"):
        parse({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, MODEL, "chat")


def test_incremental_text_holds_back_an_incomplete_character():
    class Bytes:  # token id = one byte of UTF-8
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    text = IncrementalText(Bytes())
    euro = list("€".encode())
    assert text.add([ord("a")], final=False) == "a"
    assert text.add(euro[:2], final=False) == ""
    assert text.add(euro[2:], final=True) == "€"


# -- a live server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    require_serve_extra()
    return write_tiny_model_with_tokenizer(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(tiny_dir, one_thread):
    with running_server(tiny_dir) as (thread, engine):
        yield thread, engine


def _openai(url):
    openai = pytest.importorskip("openai", reason="the official openai client is not installed (test extra)")
    return openai, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_openai_client_completions_streaming_and_not_match_offline_generation(server, tiny_dir):
    thread, engine = server
    openai, client = _openai(thread.url)
    from executor.engine import LLMEngine
    from executor.sampler import SamplingParams
    from tests.serve_helpers import load_tiny_tokenizer

    prompt = "what is the capital of france ?"
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=7, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=7, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    offline = LLMEngine(tiny_dir, tokenizer=load_tiny_tokenizer(tiny_dir), device="cpu", num_blocks=64,
                        max_model_len=512).generate(prompt, SamplingParams(temperature=0.0, max_tokens=7))[0]

    assert whole.choices[0].text == offline.text
    assert whole.choices[0].finish_reason == offline.finish_reason
    assert whole.usage.completion_tokens == len(offline.token_ids)
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == len(offline.token_ids)  # one chunk per generated token
    assert "".join(c.choices[0].text for c in token_chunks) == offline.text
    assert token_chunks[-1].choices[0].finish_reason == offline.finish_reason
    assert chunks[-1].usage.completion_tokens == len(offline.token_ids)
    ids = client.completions.create(model="tiny", prompt=[3, 4, 5, 6], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 4 and ids.usage.completion_tokens == 3


def test_openai_client_chat_streaming_and_not(server):
    thread, _engine = server
    openai, client = _openai(thread.url)
    messages = [{"role": "user", "content": "say hello world"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    stream = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                 stream=True))
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 5
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == "length"
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_openai_client_sees_clear_4xx_errors(server):
    thread, _engine = server
    openai, client = _openai(thread.url)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hello", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="hello", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt=[7] * 600, max_tokens=2)
    import httpx

    resp = httpx.post(thread.url + "/v1/completions", content=b"{not json", timeout=10)
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]


def test_health_and_prometheus_metrics(server):
    import httpx

    thread, engine = server
    assert httpx.get(thread.url + "/health", timeout=10).text == "ok"
    before = engine.counters.generation_tokens
    httpx.post(thread.url + "/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3, 4] * 8, "max_tokens": 4,
                                                     "ignore_eos": True}, timeout=30).raise_for_status()
    text = httpx.get(thread.url + "/metrics", timeout=10).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate",
                 "request_success_total", "generation_tokens_total", "requests_aborted_total"):
        assert f"folovllm:{name}" in values, name
    assert values["folovllm:generation_tokens_total"] >= before + 4
    assert values["folovllm:num_requests_running"] == 0 and values["folovllm:kv_cache_usage_perc"] == 0.0
    assert "# TYPE folovllm:request_success_total counter" in text


def _assert_aborted_and_freed(engine, rid):
    _wait_until(lambda: not engine.scheduler.has_unfinished_requests(), what="the request to end")
    assert engine.recorder.timelines[rid].status == "aborted"
    assert engine.scheduler.kv_cache_usage == 0.0  # every block back in the free list


def test_disconnecting_streaming_client_aborts_its_request_and_frees_its_blocks(server):
    import httpx

    thread, engine = server
    aborted = engine.counters.requests_aborted
    body = {"model": "tiny", "prompt": list(range(10, 90)), "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", thread.url + "/v1/completions", json=body, headers={"X-Request-Id": "leaver"},
                      timeout=30) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen == 3:
                assert engine.scheduler.kv_cache_usage > 0.0
                break
    _assert_aborted_and_freed(engine, "leaver")
    assert engine.counters.requests_aborted == aborted + 1
    assert len(engine.recorder.timelines["leaver"].token_times) < 400


def test_disconnecting_non_streaming_client_aborts_too(server):
    import httpx

    thread, engine = server
    body = {"model": "tiny", "prompt": list(range(10, 90)), "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(thread.url + "/v1/completions", json=body, headers={"X-Request-Id": "impatient"}, timeout=0.3)
    _assert_aborted_and_freed(engine, "impatient")


def test_burst_above_capacity_every_request_is_counted(tiny_dir, one_thread):
    """12 requests at once against 2 running slots and a waiting queue of 2: the rest get 429,
    a too-short client timeout ends one more; nothing is lost on either side."""
    from experiments.serve.http_replay import ClientConfig, replay
    from policy import Request

    with running_server(tiny_dir, max_waiting=2, max_num_seqs=2) as (thread, engine):
        reqs = [Request(f"b{i}", list(range(20 + i, 60 + i)), 200, arrival_time=0.0) for i in range(12)]
        run = replay(reqs, ClientConfig(thread.url, "tiny", max_in_flight=12, timeout_s=30.0))
        slow = replay([Request("slow", list(range(5, 45)), 460, arrival_time=0.0)],
                      ClientConfig(thread.url, "tiny", timeout_s=0.3))
        _wait_until(lambda: not engine.scheduler.has_unfinished_requests(), what="the server to drain")
    counts = run.counts
    assert sum(counts[s] for s in ("finished", "aborted", "rejected", "timed_out", "failed")) == 12
    assert counts["failed"] == 0 and counts["timed_out"] == 0
    # At least the waiting queue's worth is served; the rest is refused at once, not queued.
    assert counts["rejected"] >= 1 and counts["finished"] >= 2
    assert counts["finished"] + counts["rejected"] == 12
    assert all(o.http_status == 429 and "waiting queue is full" in o.error for o in run.outcomes
               if o.status == "rejected")
    assert all(len(o.token_times) == 200 for o in run.outcomes if o.status == "finished")
    assert slow.outcomes[0].status == "timed_out"
    c = engine.counters
    assert c.requests_received == 13
    assert c.requests_rejected_queue_full == counts["rejected"]
    assert c.requests_finished == counts["finished"]
    assert c.requests_aborted == 1  # the timed-out one: its connection closed, the server aborted it
    assert c.requests_finished + c.requests_aborted + c.requests_rejected_queue_full + c.requests_rejected_invalid \
        == c.requests_received
    assert engine.scheduler.kv_cache_usage == 0.0


def test_serve_command_without_the_extra_says_what_to_install(monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from experiments.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    res = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert res.exit_code != 0
    assert "pip install 'folovllm[serve]'" in res.output and "missing: uvicorn" in res.output
