"""Fine-tuning a published-format checkpoint on chat jsonl: loss on assistant tokens only."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import TINY, losses

from huginn.errors import HuginnError
from huginn.train.config import load_config
from huginn.train.data import encode_chat
from huginn.train.loop import train

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "what is two plus two"}, {"role": "assistant", "content": "four"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "name a color"},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": "another"},
        {"role": "assistant", "content": "red"},
    ],
    [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello there friend"}],
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([m["content"] for c in CHATS for m in c] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    from huginn import RavenConfig, RavenForCausalLM, named_shape

    path = tmp_path_factory.mktemp("base")
    tok = make_tokenizer()
    torch.manual_seed(0)
    mc = named_shape("tiny", vocab_size=len(tok), padding_multiple=64, n_embd=32, n_heads=2, intermediate_size=64)
    RavenForCausalLM(RavenConfig.from_model_config(mc)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    data = path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    return path


def test_loss_mask_covers_exactly_the_assistant_turns():
    tok = make_tokenizer()
    ids, mask = encode_chat(tok, CHATS[1], 64)
    assert tok.decode(ids[mask].tolist()) == "blue<|end|>\nred<|end|>\n"
    n = len(tok(tok.apply_chat_template(CHATS[1], tokenize=False))["input_ids"])
    assert not mask[n:].any() and (ids[n:] == tok.pad_token_id).all()


def test_finetune_from_published_checkpoint(checkpoint_dir, tmp_path):
    base = [
        *TINY,
        "data.kind=chat",
        f"data.path={checkpoint_dir / 'chat.jsonl'}",
        f"model.init_from={checkpoint_dir}",
        "model.overrides={}",
        "optim.lr=3e-3",
        "schedule.warmup=0",
        "schedule.decay=0",
        "eval.scaling=[2]",
    ]
    result = train(load_config(None, base, **{"train.max_steps": 8}), tmp_path / "ft")
    seen = losses(tmp_path / "ft")
    assert seen[8] < seen[1]
    # export carries the tokenizer and the chat template along
    from transformers import AutoTokenizer

    from huginn.train.export import export_run

    export_run(tmp_path / "ft", tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).chat_template == TEMPLATE
    assert result.scaling[2] < 10


def test_vocab_mismatch_is_an_error(checkpoint_dir, tmp_path):
    from huginn.train.corpus import char_tokenizer

    small = tmp_path / "tok"
    tok = make_tokenizer()
    tok.add_tokens([f"extra{i}" for i in range(100)])  # now larger than the model's vocabulary
    tok.save_pretrained(str(small))
    cfg = load_config(
        None,
        [
            *TINY,
            "data.kind=chat",
            f"data.path={checkpoint_dir / 'chat.jsonl'}",
            f"model.init_from={checkpoint_dir}",
            f"data.tokenizer={small}",
            "model.overrides={}",
        ],
    )
    with pytest.raises(HuginnError, match="vocab mismatch: the tokenizer has 3.. tokens but the model only 2.."):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert char_tokenizer() is not None
