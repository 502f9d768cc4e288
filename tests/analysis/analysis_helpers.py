"""Helpers of the analysis tests: a byte-level tokenizer for the reference fixture (vocab 256)."""

from __future__ import annotations

from pathlib import Path


def byte_tokenizer(folder: Path) -> Path:
    """Save a byte-level fast tokenizer (one token per byte, ids 0-255) into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))
    return folder
