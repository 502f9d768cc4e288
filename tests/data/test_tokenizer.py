"""Tokenizer training: Huginn's special-token layout, digit splitting, chat template, vocab check."""

from __future__ import annotations

import pytest

from huginn.data.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, check_vocab, special_token_ids, train_tokenizer
from huginn.errors import HuginnError


def test_published_ids_in_full_vocabulary():
    ids = special_token_ids(65536)
    assert [
        ids[t]
        for t in ("<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>")
    ] == list(range(65504, 65510))
    assert max(ids.values()) == 65535 and len(set(ids.values())) == len(SPECIAL_TOKENS)


def test_trained_tokenizer_loads_with_autotokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 512
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (480, 481, 485)
    assert tok.convert_ids_to_tokens(list(range(480, 512))) == list(SPECIAL_TOKENS)
    text = "naïve café 🦭 x**2 // 7\n\ttab"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_single_tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # "1234567" is frequent in the corpus; BPE would merge it without the digit split
    pieces = tok.tokenize(" 1234567 42")
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == list("1234567") + list("42")


def test_chat_template(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    msgs = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|begin_text|><|begin_header|>user<|end_header|>\n\nhi<|end_turn|>"
        "<|begin_header|>Huginn<|end_header|>\n\nhello<|end_turn|><|end_text|>"
    )
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|end_turn|><|begin_header|>Huginn<|end_header|>\n\n")
    assert "generation" in CHAT_TEMPLATE  # assistant-token masks for fine-tuning


def test_tiny_corpus_fills_reserved_ids(tmp_path):
    train_tokenizer(["ab ab ab"], 400, tmp_path / "t")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "t" / "tokenizer.json"))
    assert tok.get_vocab_size() == 400 and tok.token_to_id("<|begin_text|>") == 368
    assert tok.id_to_token(367).startswith("<|reserved_")


def test_vocab_too_small(tmp_path):
    with pytest.raises(HuginnError, match="at least 288"):
        train_tokenizer(["x"], 287, tmp_path / "t")


def test_check_vocab(tokenizer_dir, tmp_path):
    assert check_vocab(tokenizer_dir, 512) == 512
    assert check_vocab(tokenizer_dir, 65536) == 512
    with pytest.raises(HuginnError, match="512 ids but the model's vocab_size is 256"):
        check_vocab(tokenizer_dir, 256)
    with pytest.raises(HuginnError, match="no tokenizer.json"):
        check_vocab(tmp_path, 512)
