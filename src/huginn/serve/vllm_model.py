"""The recurrent-depth model in vLLM's blocks: vLLM's parallel linear layers, RMSNorm, vocabulary-
parallel embedding and head, logits processor and paged `Attention`, so vLLM's continuous batching,
paged KV cache, prefix caching, sampling and (on GPUs) torch.compile, CUDA graphs and tensor
parallelism apply to it.

It is a second implementation of `huginn.model.recurrent.RecurrentLM` (vLLM needs its own layers)
and shares every definition it can with it: the shape comes from `RavenConfig.to_model_config`,
the parameter names are the published ones (so `load_weights` maps nothing), RoPE is
`huginn.model.layers.apply_rope` over the checkpoint's own `freqs_cis` table, the block types and
the readout follow `huginn.model.layers` / `RecurrentLM.readout`, and the attention layer of every
cache slot comes from `SlotLayout` and the KV mode's `CachePolicy` (`huginn.serve.options`).

vLLM attends each attention layer over its own paged KV cache, so the core, reused `num_steps`
times per forward, needs one `Attention` per (step, core layer) for huginn's full cache
(`kv_mode="full"`), or one per core layer, overwritten at every step (`kv_mode="shared"`).

The initial state is zero (`init_scale` 0): vLLM's forward gets no generator per request.
Non-goals: per-request depth and adaptive exits (vLLM passes the model no per-request values),
pipeline parallelism, qk_norm under tensor parallelism.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.utils import set_weight_attrs
from vllm.sequence import IntermediateTensors

from huginn.config import ModelConfig
from huginn.errors import HuginnError
from huginn.model.layers import apply_rope, rope_table
from huginn.model.slots import SlotLayout
from huginn.serve.options import ServeOptions, check_head_dim


def _model_config(hf) -> ModelConfig:
    """The shape of vLLM's `hf_config`: huginn's `RavenConfig` (registered with transformers by the
    plugin), or the reference's remote-code class (`--trust-remote-code`), re-read as ours."""
    if not hasattr(hf, "to_model_config"):
        from huginn.hf.configuration import RavenConfig

        hf = RavenConfig(**hf.to_dict())
    return hf.to_model_config()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class HuginnAttention(nn.Module):
    """`huginn.model.layers.Attention` in vLLM's layers; the KV cache it attends over is passed in
    (the `Attention` of the cache slot this call writes)."""

    def __init__(self, cfg: ModelConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if cfg.n_heads % tp or (cfg.n_kv_heads % tp and tp % cfg.n_kv_heads):
            raise HuginnError(
                f"tensor_parallel_size {tp} does not divide the model's {cfg.n_heads} heads / {cfg.n_kv_heads} "
                "KV heads; pick a tensor_parallel_size that does"
            )
        if cfg.qk_norm and tp > 1:
            raise HuginnError("qk_norm models are served with tensor_parallel_size 1 only")
        self.hd = cfg.head_dim
        self.n_heads, self.n_kv = cfg.n_heads // tp, max(1, cfg.n_kv_heads // tp)
        quant = vllm_config.quant_config
        self.Wqkv = QKVParallelLinear(
            cfg.n_embd, self.hd, cfg.n_heads, cfg.n_kv_heads, bias=False, quant_config=quant, prefix=f"{prefix}.Wqkv"
        )
        self.qk_bias: nn.Parameter | None = None
        if cfg.qk_bias:  # (2, 1, heads, hd): rows [q | k], sharded over heads
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_heads, self.hd), requires_grad=False)
            set_weight_attrs(self.qk_bias, {"weight_loader": _head_shard_loader(dim=2)})
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.n_heads * self.hd, eps=cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.n_kv_heads * self.hd, eps=cfg.norm_eps)
        self.proj = RowParallelLinear(
            cfg.n_heads * self.hd, cfg.n_embd, bias=False, quant_config=quant, prefix=f"{prefix}.proj"
        )

    def forward(self, x: Tensor, rope: Tensor, kv: Attention) -> Tensor:
        T = x.shape[0]
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        qkv, _ = self.Wqkv(x)
        q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(1, T, H, hd), k.view(1, T, KV, hd)  # (1, T, heads, hd): apply_rope's (B, S, H, hd)
        if self.qk_bias is not None:  # added before RoPE, as published
            q, k = q + self.qk_bias[0], k + self.qk_bias[1]
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = kv(q.reshape(T, H * hd), k.reshape(T, KV * hd), v.contiguous())
        out, _ = self.proj(y)
        return out


def _head_shard_loader(dim: int):
    """A weight loader that keeps this tensor-parallel rank's heads along `dim`."""

    def load(param: nn.Parameter, loaded: Tensor) -> None:
        size = param.shape[dim]
        start = get_tensor_model_parallel_rank() * size
        param.data.copy_(loaded.narrow(dim, start, size))

    return load


class GatedMLP(nn.Module):
    """fc rows [gate | up] (one merged column-parallel layer), SiLU(gate) * up, proj."""

    def __init__(self, cfg: ModelConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        quant = vllm_config.quant_config
        self.fc = MergedColumnParallelLinear(
            cfg.n_embd, [cfg.intermediate_size] * 2, bias=False, quant_config=quant, prefix=f"{prefix}.fc"
        )
        self.act = SiluAndMul()
        self.proj = RowParallelLinear(
            cfg.intermediate_size, cfg.n_embd, bias=False, quant_config=quant, prefix=f"{prefix}.proj"
        )

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.fc(x)
        out, _ = self.proj(self.act(h))
        return out


class Block(nn.Module):
    """The block types of `huginn.model.layers.BLOCKS` (sandwich, prenorm, postnorm)."""

    norm_1: nn.Module
    norm_2: nn.Module
    norm_3: nn.Module  # sandwich only
    norm_4: nn.Module  # sandwich only

    def __init__(self, cfg: ModelConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.kind = cfg.block_type
        n_norms = 4 if self.kind == "sandwich" else 2
        for i in range(1, n_norms + 1):
            setattr(self, f"norm_{i}", RMSNorm(cfg.n_embd, eps=cfg.norm_eps))
        self.attn = HuginnAttention(cfg, vllm_config, f"{prefix}.attn")
        self.mlp = GatedMLP(cfg, vllm_config, f"{prefix}.mlp")

    def forward(self, x: Tensor, rope: Tensor, kv: Attention) -> Tensor:
        if self.kind == "sandwich":  # x = n2(attn(n1(x)) + x); x = n4(mlp(n3(x)) + x)
            x = self.norm_2(self.attn(self.norm_1(x), rope, kv) + x)
            return self.norm_4(self.mlp(self.norm_3(x)) + x)
        if self.kind == "prenorm":  # x = x + attn(n1(x)); x = x + mlp(n2(x))
            x = x + self.attn(self.norm_1(x), rope, kv)
            return x + self.mlp(self.norm_2(x))
        x = x + self.norm_1(self.attn(x, rope, kv))  # postnorm: x = x + n1(attn(x)); x = x + n2(mlp(x))
        return x + self.norm_2(self.mlp(x))


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "inputs_embeds": 0})
class HuginnModel(nn.Module):
    """`transformer.*` of the published format: wte, prelude, adapter, core_block, coda, ln_f,
    plus `kv`: the vLLM attention layers (KV caches), one per cache slot of the KV mode."""

    freqs_cis: Tensor

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        hf = vllm_config.model_config.hf_config
        cfg = _model_config(hf)
        opts = ServeOptions.of(hf)
        self.cfg, self.opts = cfg, opts
        self.layout = SlotLayout.of(cfg)
        max_len = vllm_config.model_config.max_model_len
        if max_len > cfg.block_size:
            raise HuginnError(
                f"max_model_len {max_len} is longer than the checkpoint's block_size {cfg.block_size} (its RoPE "
                f"table); pass --max-model-len {cfg.block_size} (or less), or "
                f'hf_overrides={{"max_position_embeddings": {cfg.block_size}}}'
            )
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            check_head_dim(cfg.head_dim, CPUAttentionBackend.get_supported_head_sizes(), "CPU")
        d = cfg.n_embd
        quant = vllm_config.quant_config
        self.wte = VocabParallelEmbedding(cfg.padded_vocab_size, d, quant_config=quant, prefix=f"{prefix}.wte")
        self.prelude = nn.ModuleList(
            Block(cfg, vllm_config, f"{prefix}.prelude.{i}") for i in range(cfg.n_layers_in_prelude)
        )
        self.adapter: ReplicatedLinear | None = None
        if cfg.injection_type == "linear":  # input columns [state | e]
            self.adapter = ReplicatedLinear(2 * d, d, bias=False, quant_config=quant, prefix=f"{prefix}.adapter")
        self.core_block = nn.ModuleList(
            Block(cfg, vllm_config, f"{prefix}.core_block.{i}") for i in range(cfg.n_layers_in_recurrent_block)
        )
        self.coda = nn.ModuleList(Block(cfg, vllm_config, f"{prefix}.coda.{i}") for i in range(cfg.n_layers_in_coda))
        self.ln_f = RMSNorm(d, eps=cfg.norm_eps)

        # one vLLM Attention (one paged KV cache) per storage slot of the KV mode; each name holds one
        # integer, which vLLM reads as the layer index
        tp = get_tensor_model_parallel_world_size()
        n_heads, n_kv = cfg.n_heads // tp, max(1, cfg.n_kv_heads // tp)
        kv_layers = []
        for i in range(opts.n_kv_layers(self.layout)):
            try:
                kv_layers.append(
                    Attention(
                        n_heads,
                        cfg.head_dim,
                        cfg.head_dim**-0.5,
                        num_kv_heads=n_kv,
                        cache_config=vllm_config.cache_config,
                        quant_config=quant,
                        prefix=f"{prefix}.kv.{i}",
                    )
                )
            except (ValueError, NotImplementedError, RuntimeError) as err:
                raise HuginnError(
                    f"vLLM cannot place this model's attention (head_dim {cfg.head_dim}, {n_heads} heads): {_one_line(err)}"
                ) from err
        self.kv = nn.ModuleList(kv_layers)
        self.prelude_kv = [opts.kv_layer_index(self.layout, s) for s in self.layout.prelude()]
        self.core_kv = [
            [opts.kv_layer_index(self.layout, s) for s in self.layout.core(t)] for t in range(opts.num_steps)
        ]
        self.coda_kv = [opts.kv_layer_index(self.layout, s) for s in self.layout.coda()]
        # the published persistent RoPE table; `load_weights` replaces it with the checkpoint's own
        self.register_buffer(
            "freqs_cis", rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base, cfg.rope_scaling), persistent=False
        )

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        x = self.wte(input_ids)
        return x * self.cfg.embed_scale if self.cfg.embed_scale != 1 else x

    def forward(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        # every token of every sequence in one flat batch: x (T, d), positions (T,)
        x = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)  # type: ignore[arg-type]
        rope = self.freqs_cis[0][positions][None]  # (1, T, 1, hd/2, 2)
        for block, i in zip(self.prelude, self.prelude_kv):
            x = block(x, rope, self.kv[i])
        e = x
        state = torch.zeros_like(e)  # init_scale 0
        for slots in self.core_kv:
            x = self.adapter(torch.cat([state, e], dim=-1))[0] if self.adapter is not None else state + e
            for block, i in zip(self.core_block, slots):
                x = block(x, rope, self.kv[i])
            state = x
        # RecurrentLM.readout: the coda reads ln_f(state) (or the raw state of a retrofitted base)
        x = self.ln_f(state) if self.cfg.coda_input_norm else state
        for block, i in zip(self.coda, self.coda_kv):
            x = block(x, rope, self.kv[i])
        return self.ln_f(x)


class HuginnForCausalLMvLLM(nn.Module):
    """The model vLLM builds for `architectures: ["RavenForCausalLM"]` (registered by the plugin)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.transformer = HuginnModel(
            vllm_config=vllm_config, prefix=f"{prefix}.transformer" if prefix else "transformer"
        )
        cfg = self.transformer.cfg
        self.config = vllm_config.model_config.hf_config
        self.lm_head = ParallelLMHead(
            cfg.padded_vocab_size,
            cfg.n_embd,
            bias=False,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.lm_head" if prefix else "lm_head",
        )
        if cfg.tie_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.transformer.wte)
        # logits over the tokenizer's vocab_size (the head's padded rows are dropped)
        self.logits_processor = LogitsProcessor(cfg.vocab_size)

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.transformer.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: Tensor | None,
        positions: Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        return self.transformer(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        """Published names map one to one onto this model's parameters; the fused Wqkv and fc
        matrices are split across tensor-parallel ranks by vLLM's own loaders."""
        params = dict(self.named_parameters())
        tied = self.transformer.cfg.tie_embeddings
        loaded: set[str] = set()
        unknown: list[str] = []
        for name, tensor in weights:
            if name == "freqs_cis":
                table: Tensor = self.transformer.freqs_cis
                if tensor.shape[1] >= table.shape[1] and tensor.shape[2:] == table.shape[2:]:
                    table.copy_(tensor[:, : table.shape[1]].to(table.dtype))
                continue
            if name == "lm_head.weight" and tied:
                continue  # the same matrix as transformer.wte.weight
            param = params.get(name)
            if param is None:
                unknown.append(name)
                continue
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, tensor)
            loaded.add(name)
        if unknown:
            shown = ", ".join(sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
            raise HuginnError(
                f"the checkpoint has {len(unknown)} weight(s) this model does not know ({shown}); is it a huginn checkpoint?"
            )
        return loaded
