"""Shared pieces of the evaluation tests: a character tokenizer with special tokens, tiny models
saved as checkpoint folders, lm-eval instances."""

from __future__ import annotations

import string
from pathlib import Path

CHARS = "\n " + string.ascii_letters + string.digits + ".,:;?!=+-*/()'#$"
SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer():
    """A transformers fast tokenizer: one token per character, pad 0, bos 1, eos 2 (vocab < 96)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in CHARS:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<pad>",
        additional_special_tokens=SPECIALS[3:],
    )
    out.chat_template = CHAT_TEMPLATE
    assert len(out) <= 96
    return out


def save_tiny_checkpoint(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random huginn model and the character tokenizer, saved as a checkpoint folder."""
    from tests.conftest import tiny_model

    model = tiny_model(seed, **overrides)
    model.save_pretrained(str(folder))
    char_tokenizer().save_pretrained(str(folder))
    return folder


def instances(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]
