"""Loading a model directory's tokenizer, quietly and with the decoding the model was trained for.

Byte-level BPE tokenizers (SmolLM2, Qwen, Llama 3) must not have `clean_up_tokenization_spaces`
applied: it strips spaces before punctuation. Some tokenizer_config.json files still say `true`,
which makes transformers print a warning on every load and ignore the setting anyway; asking for
`False` explicitly gives the same text and no warning.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(model_dir: str | Path):
    """The HF tokenizer of `model_dir`; OSError / ValueError from transformers name the directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), clean_up_tokenization_spaces=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{model_dir}: cannot load the tokenizer ({exc})") from None
