"""Fixtures' building blocks for the HTTP tests: a tiny random model with a word-level
tokenizer of its own vocabulary (every token decodes to a non-empty word, so each stream
chunk carries text) and a chat template, and a server over it on a free loopback port."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)
WORDS = ["user", "assistant", "system", ":", "hello", "world", "the", "a", "is", "what", "capital", "of", "france",
         "paris", "say", "something", "?", ".", ","]


def require_serve_extra() -> None:
    missing = [m for m in ("starlette", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the optional 'serve' extra is not installed (missing {', '.join(missing)}): "
                    "pip install -e '.[serve]'")


def write_tiny_model_with_tokenizer(out: Path, vocab_size: int = 512) -> Path:
    """tiny-qwen2 random weights plus a WordLevel tokenizer of exactly `vocab_size` tokens:
    <unk>=0, <s>=1 (bos), </s>=2 (eos, as in the tiny config), then words, then w<k> fillers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from executor.models_registry import write_random_model

    path = write_random_model("tiny-qwen2", out, seed=0)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab[word] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return path


def load_tiny_tokenizer(model_dir: Path):
    """The word-level tokenizer, loaded as itself (AutoTokenizer would pick the tiny config's
    Qwen2 byte-level class for it)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(model_dir))


@contextmanager
def running_server(model_dir: Path, *, name: str = "tiny", max_waiting: int = 64, keep_timelines: bool = True,
                   **engine_kwargs):
    """An LLMEngine over `model_dir` behind the HTTP server on 127.0.0.1:<free port>; yields
    (ServerThread, AsyncEngine). The server stops when the block ends."""
    from executor.engine import LLMEngine
    from executor.serve.server import ServerThread, build_server

    engine_kwargs.setdefault("tokenizer", load_tiny_tokenizer(model_dir))

    kwargs = dict(device="cpu", num_blocks=256, block_size=16, max_model_len=512, max_num_seqs=8,
                  max_num_batched_tokens=256)
    kwargs.update(engine_kwargs)
    engine = LLMEngine(model_dir, **kwargs)
    server = build_server(engine, model_name=name, max_waiting=max_waiting, keep_timelines=keep_timelines)
    with ServerThread(server) as thread:
        yield thread, server.engine
