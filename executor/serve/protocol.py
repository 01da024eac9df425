"""The OpenAI wire format: request bodies in (checked, turned into token ids and sampling
parameters), response objects and stream chunks out.

Pure functions over dicts, so every rule about what a client may send is tested without a
server. A bad field is an `ApiError` naming it, which the app answers with OpenAI's error
object (`{"error": {"message", "type", "param", "code"}}`) and a 4xx status. vLLM's extensions
that load generators send (`ignore_eos`, `min_tokens`, `top_k`, `stop_token_ids`, token-id
prompts) are accepted; what this engine cannot do (n > 1, stop strings, logprobs, penalties,
echo) is refused by name rather than silently ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from executor.sampler import SamplingParams


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ModelInfo:
    """What request checking needs to know about the served model."""

    name: str
    max_model_len: int
    vocab_size: int
    tokenizer: object | None = None  # a transformers tokenizer, or None (token-id prompts only)


@dataclass
class Generation:
    """One checked request: what to run and how to answer."""

    kind: str  # "completion" | "chat"
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


# Fields this engine cannot honour: refused when set to anything but their neutral value.
_UNSUPPORTED_NEUTRAL = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
    "suffix": (None, ""), "tools": (None, []), "response_format": (None,),
}


def _check_unsupported(body: dict) -> None:
    for name, neutral in _UNSUPPORTED_NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(value == v for v in neutral):
            raise ApiError(400, f"{name}={value!r} is not supported by this server", param=name,
                           code="unsupported_parameter")
    n = body.get("n")
    if n not in (None, 1):
        raise ApiError(400, f"n={n!r}: this server returns one choice per request (n=1)", param="n")
    stop = body.get("stop")
    if stop not in (None, [], ""):
        raise ApiError(400, "stop strings are not supported; use stop_token_ids", param="stop",
                       code="unsupported_parameter")


def _number(body: dict, name: str, default, kind=float, *, lo=None, hi=None, lo_open=False):
    value = body.get(name)
    if value is None:
        return default
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ApiError(400, f"{name}={value!r}: must be {'an integer' if kind is int else 'a number'}", param=name)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ApiError(400, f"{name}={value!r}: must be {'>' if lo_open else '>='} {lo}", param=name)
    if hi is not None and value > hi:
        raise ApiError(400, f"{name}={value!r}: must be <= {hi}", param=name)
    return kind(value)


def check_model(body: dict, model: ModelInfo) -> None:
    name = body.get("model")
    if name is None:
        raise ApiError(400, "model is required", param="model")
    if name != model.name:
        raise ApiError(404, f"The model `{name}` does not exist; this server serves `{model.name}`", param="model",
                       code="model_not_found", type="NotFoundError")


def _token_ids(value, model: ModelInfo, param: str) -> list[int]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ApiError(400, f"{param}: a token-id prompt must be a list of integers", param=param)
    bad = [t for t in value if not 0 <= t < model.vocab_size]
    if bad:
        raise ApiError(400, f"{param}: token id(s) {bad[:5]} outside the vocabulary [0, {model.vocab_size})",
                       param=param)
    return list(value)


def _encode(text: str, model: ModelInfo, param: str) -> list[int]:
    if model.tokenizer is None:
        raise ApiError(400, f"{param}: this model has no tokenizer; send token ids", param=param)
    return list(model.tokenizer.encode(text, add_special_tokens=False)) if text else []


def completion_prompt(body: dict, model: ModelInfo) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return _encode(prompt, model, "prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        raise ApiError(400, f"prompt: a batch of {len(prompt)} prompts; send one request per prompt", param="prompt")
    if isinstance(prompt, list):
        return _token_ids(prompt, model, "prompt")
    raise ApiError(400, "prompt must be a string or a list of token ids", param="prompt")


def chat_prompt(body: dict, model: ModelInfo) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role'", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            m = {**m, "content": "".join(p.get("text", "") for p in content)}
            messages = messages[:i] + [m] + messages[i + 1:]
        elif not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
    tok = model.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def parse(body: dict, model: ModelInfo, kind: str) -> Generation:
    """A request body -> Generation, or ApiError naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    check_model(body, model)
    _check_unsupported(body)
    prompt = completion_prompt(body, model) if kind == "completion" else chat_prompt(body, model)
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt" if kind == "completion" else "messages")
    if len(prompt) >= model.max_model_len:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens; this model's context is {model.max_model_len} "
                            "tokens, which leaves no room to generate", param="prompt" if kind == "completion"
                       else "messages", code="context_length_exceeded")
    room = model.max_model_len - len(prompt)
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens = _number(body, "max_completion_tokens", None, int, lo=1)
    else:
        max_tokens = _number(body, "max_tokens", 16 if kind == "completion" else room, int, lo=1)
    if max_tokens > room:
        raise ApiError(400, f"max_tokens={max_tokens} plus the prompt's {len(prompt)} tokens exceed this model's "
                            f"context of {model.max_model_len} tokens", param="max_tokens",
                       code="context_length_exceeded")
    temperature = _number(body, "temperature", 1.0, lo=0, hi=2)
    top_p = _number(body, "top_p", 1.0, lo=0, hi=1, lo_open=True)
    top_k = _number(body, "top_k", 0, int, lo=-1)
    seed = _number(body, "seed", None, int)
    min_tokens = _number(body, "min_tokens", 0, int, lo=0, hi=max_tokens)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos={ignore_eos!r}: must be true or false", param="ignore_eos")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list):
        raise ApiError(400, "stop_token_ids must be a list of token ids", param="stop_token_ids")
    stop_ids = _token_ids(stop_ids, model, "stop_token_ids")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream={stream!r}: must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=max_tokens,
                            min_tokens=min_tokens, ignore_eos=ignore_eos, stop_token_ids=tuple(stop_ids))
    return Generation(kind, prompt, params, stream, bool(options.get("include_usage")) and stream)


# -- responses ----------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(rid: str, model: str, text: str, finish_reason: str | None, n_prompt: int, n_out: int,
                        kind: str, token_ids: list[int]) -> dict:
    created = int(time.time())
    if kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "token_ids": token_ids}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason, "token_ids": token_ids}
        obj = "chat.completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage(n_prompt, n_out)}


def chunk(rid: str, model: str, kind: str, text: str, finish_reason: str | None, token_ids: list[int],
          first: bool) -> dict:
    """One stream chunk per step of the request: the text those tokens added (possibly empty
    while a multi-byte character is incomplete) and the token ids themselves."""
    if kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "token_ids": token_ids}
        obj = "text_completion"
    else:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason,
                  "token_ids": token_ids}
        obj = "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(rid: str, model: str, kind: str, n_prompt: int, n_out: int) -> dict:
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(n_prompt, n_out)}


class IncrementalText:
    """Text of a growing token list, handed out as deltas. A trailing U+FFFD (an incomplete
    UTF-8 sequence) is held back until the next token completes it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.sent = ""

    def add(self, token_ids: list[int], final: bool) -> str:
        self.token_ids.extend(token_ids)
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        if delta:
            self.sent = text
        return delta
