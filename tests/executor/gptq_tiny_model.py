"""Tiny random Llama-style models with a tiny byte-level BPE tokenizer, for the GPTQ tests.

Shapes are chosen to hit the awkward cases: hidden 96 at group 64 gives a partial last group
(96 = 64 + 32), intermediate 160 likewise (160 = 2 * 64 + 32).
"""

from __future__ import annotations

from pathlib import Path

import torch

LICENSE_TEXTS = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())


def sample_text() -> str:
    if LICENSE_TEXTS:
        return "\n\n".join(p.read_text(errors="replace") for p in LICENSE_TEXTS[:4])
    words = "the quick brown fox jumps over the lazy dog while licences grant permission to copy".split()
    g = torch.Generator().manual_seed(0)
    return " ".join(words[int(i)] for i in torch.randint(0, len(words), (20000,), generator=g))


def make_tokenizer(text: str, vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def write_tiny_model(out: Path, *, hidden: int = 96, intermediate: int = 160, layers: int = 2,
                     attention_bias: bool = False, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (float32 safetensors) plus tokenizer in `out`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = sample_text()
    tok = make_tokenizer(text)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=hidden // 4, max_position_embeddings=1024, tie_word_embeddings=True,
                      attention_bias=attention_bias, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
