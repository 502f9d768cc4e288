"""Tiny checkpoints whose head size vLLM's CPU attention supports (32), a one-character tokenizer, and
the environment the vLLM tests run vLLM in (in-process engine, one thread, a small KV cache)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tests.retrofit.helpers import LLAMA3_ROPE

# vLLM's engine in this process (the plugin registered by hand reaches it), one unbound thread
# (2 shared cores), 1 GiB of KV cache
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer(folder: Path) -> None:
    """256 single characters (printable ASCII, then Latin letters), one token each: every id sequence
    decodes to whole characters, so texts compare exactly (random bytes would leave partial UTF-8)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(0xC0, 0x250)]
    vocab = {ch: i for i, ch in enumerate(chars[:256])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))


def tiny_checkpoint(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """The `tiny` shape (2+4+2, width 64) with 2 heads of 32, saved in the published format."""
    from huginn import RavenConfig, RavenForCausalLM, named_shape

    shape = dict(n_embd=64, n_heads=2, block_size=256)
    shape.update(overrides)
    torch.manual_seed(seed)
    model = RavenForCausalLM(RavenConfig.from_model_config(named_shape("tiny", **shape))).eval()
    model.save_pretrained(str(folder))
    if tokenizer:
        char_tokenizer(folder)
    return folder


def retrofitted_checkpoint(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A random 6-layer base (head size 32) retrofitted 2+3+1 with a linear injection, so depth
    matters: llama (GQA, llama3 RoPE scaling, tied) or olmo2 (post-norm, QK-norm, untied)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

    from huginn.retrofit import LayerMap, convert

    common = dict(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama":
        cfg = LlamaConfig(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE, **common)
        cls = LlamaForCausalLM
    else:
        cfg, cls = Olmo2Config(tie_word_embeddings=False, **common), Olmo2ForCausalLM
    torch.manual_seed(seed)
    base = cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(
                1 + 0.3 * torch.randn(p.shape, generator=g) if p.ndim == 1 else 0.15 * torch.randn(p.shape, generator=g)
            )
    model = convert(base, LayerMap((0, 1), (2, 3, 4), (5,)), "linear", mean_recurrence=3, seed=seed)
    model.save_pretrained(str(folder))
    return folder


def prompts(vocab: int, lengths=(3, 17, 40, 9), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def set_vllm_env() -> None:
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)
